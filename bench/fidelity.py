"""Fidelity to FP32 on the scored images (top-1, agreement with FP32's top-1, KL of the softmax from
FP32's) and on the calibration images (KL): ours with given quantize options (``default`` or
``k=v,k=v``, dfp at the network's acceptance widths) and onnxruntime per-tensor int8
(``ort:METHOD``; its calibrator is fed one 50-image batch per ``collect_data`` call, ranges and
histograms merged across calls, bench.depthwise.streamed_calibration: all 500 images at once were
killed for memory). Calibration and scored images as bench/accuracy.py (never the same images).

Run: ``nice -n 10 python bench/fidelity.py [--net squeezenet|lenet|resnet20] default ort:Percentile``.
"""
import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import ort_quant  # noqa: E402
from bench.accuracy import NETS, splits  # noqa: E402
from bench.depthwise import streamed_calibration  # noqa: E402
from ristretto_onnx import zoo  # noqa: E402
from ristretto_onnx.output_bias import divergence  # noqa: E402
from ristretto_onnx.quantize import QuantizeOptions, quantize  # noqa: E402
from ristretto_onnx.runtime.session import create_session  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="squeezenet", choices=list(NETS))
    ap.add_argument("configs", nargs="+")
    a = ap.parse_args(argv)
    name, widths = NETS[a.net]
    batch = 50 if a.net == "squeezenet" else 250
    calib, scored = splits(name, 500)
    path = zoo.get_model(name).locate()

    def outs(model, data):
        s = create_session(model)
        i = s.get_inputs()[0].name
        return np.concatenate([s.run(None, {i: np.ascontiguousarray(x, np.float32)})[0]
                               for x, _ in data.batches(batch)]).reshape(len(data), -1)

    y = np.concatenate([label for _, label in scored.batches(batch)])
    fp, fp_calib = outs(str(path), scored), outs(str(path), calib)

    def row(tag, model, t):
        o, oc = outs(model, scored), outs(model, calib)
        print(f"{tag}: top1 {(o.argmax(1) == y).mean():.4f} agree {(o.argmax(1) == fp.argmax(1)).mean():.4f} "
              f"kl {divergence(fp, o):.5f} calib-kl {divergence(fp_calib, oc):.5f} "
              f"{time.perf_counter() - t:.0f}s", flush=True)

    print(f"{a.net} FP32: top1 {(fp.argmax(1) == y).mean():.4f} on {len(scored)} images, calibrated on "
          f"{len(calib)}", flush=True)
    for arg in a.configs:
        t = time.perf_counter()
        if arg.startswith("ort:"):
            method = arg[4:]
            with tempfile.TemporaryDirectory() as work:
                pre = ort_quant.preprocess_for_quantization(path, Path(work))
                batches = [np.ascontiguousarray(x, np.float32) for x, _ in calib.batches(50)]
                with contextlib.redirect_stdout(io.StringIO()), streamed_calibration():
                    q = ort_quant.quantize(pre, create_session(str(path)).get_inputs()[0].name, batches,
                                           ort_quant.OrtQuantConfig(False, method), Path(work))
                row(f"ort per-tensor {method}", str(q.path), t)
        else:
            kw = dict(kv.split("=") for kv in arg.split(",")) if arg != "default" else {}
            res = quantize(f"zoo:{name}", QuantizeOptions(scheme="dfp", calib_size=len(calib), batch_size=32,
                                                          **{**widths[0], **kw}), calib)
            stages = ", ".join(f"{k} {v:.0f}" for k, v in res.seconds.items())
            row(f"ours {arg} (rule {res.options.range_rule}, weight rounding {res.options.weight_rounding}, "
                f"bias correction {res.bias_correction}; s: {stages})", res.model, t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
