"""Fidelity to FP32 on the scored half of the ImageNet sample (top-1, agreement, KL): ours with
given quantize options (``default`` or ``k=v,k=v``) and onnxruntime per-tensor int8 (``ort:METHOD``;
its calibrator is fed one 50-image batch per ``collect_data`` call, ranges and histograms merged
across calls, bench.depthwise.streamed_calibration: all 500 images at once were killed for memory).

Run: ``nice -n 10 python bench/fidelity.py default ort:Percentile``.
"""
import sys, time, tempfile, contextlib, io, numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.accuracy import splits
from bench import ort_quant
from bench.depthwise import streamed_calibration
from ristretto_onnx import zoo
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.output_bias import divergence
name = 'squeezenet1.1-imagenet'
calib, scored = splits(name, 500)
path = zoo.get_model(name).locate()
def outs(model):
    s = create_session(model); i = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {i: np.ascontiguousarray(x, np.float32)})[0] for x, _ in scored.batches(50)]).reshape(len(scored), -1)
y = np.concatenate([l for _, l in scored.batches(50)])
fp = outs(str(path))
def row(tag, o):
    print(f'{tag}: top1 {(o.argmax(1)==y).mean():.4f} agree {(o.argmax(1)==fp.argmax(1)).mean():.4f} kl {divergence(fp, o):.5f}', flush=True)
row('FP32', fp)
for arg in sys.argv[1:]:
    if arg.startswith('ort:'):
        method = arg[4:]
        with tempfile.TemporaryDirectory() as work:
            pre = ort_quant.preprocess_for_quantization(path, Path(work))
            batches = [np.ascontiguousarray(x, np.float32) for x, _ in calib.batches(50)]
            with contextlib.redirect_stdout(io.StringIO()), streamed_calibration():
                q = ort_quant.quantize(pre, create_session(str(path)).get_inputs()[0].name, batches, ort_quant.OrtQuantConfig(False, method), Path(work))
            row(f'ort per-tensor {method}', outs(str(q.path)))
    else:
        kw = dict(a.split('=') for a in arg.split(',')) if arg != 'default' else {}
        res = quantize(f'zoo:{name}', QuantizeOptions(scheme='dfp', bits=8, calib_size=len(calib), batch_size=32, **kw), calib)
        row(f'ours {arg} (rule {res.options.range_rule}, bc {res.bias_correction})', outs(res.model))
