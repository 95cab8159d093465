"""Range rules compared on calibration data (what ``quantize --range-rule auto`` decides by) and,
afterwards, on the scored images: plain plans (no bias correction), rounded once.

Run: ``nice -n 10 python bench/range_rule_choice.py squeezenet1.1-imagenet 8 mse,max,percentile:99.99``.
"""
import sys, time, numpy as np
from dataclasses import replace
sys.path.insert(0, '/work/wt/acc')
from bench.accuracy import splits
from ristretto_onnx import zoo
from ristretto_onnx.quantize import QuantizeOptions, _outputs
from ristretto_onnx.context import load_batches
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.passes.grid_ties import grid_sources, round_once
from ristretto_onnx.passes.analysis.concat_ties import concat_ties
from ristretto_onnx.ranges import measure_groups
from ristretto_onnx.schemes import plan_for
from ristretto_onnx.output_bias import divergence
name = sys.argv[1]; bits = int(sys.argv[2]); rules = sys.argv[3].split(',')
calib, scored = splits(name, 500)
prepared = prepare(str(zoo.get_model(name).locate()))
layers = prepared.layers.select((), ())
opts = QuantizeOptions(scheme='dfp', bits=bits, range_rule='mse', batch_size=32)
t = time.time()
ranges = measure_groups(prepared.float_model, layers, calib, batch_size=32, unsigned=True)
print('calibrated', time.time() - t, flush=True)
ties = concat_ties(prepared.float_model, layers); sources = grid_sources(prepared.float_model, layers)
cb = load_batches(calib.take(300), 32); tb = load_batches(scored, 50)
ref_c = _outputs(prepared.float_model, cb, None); ref_t = _outputs(prepared.float_model, tb, None)
yt = np.concatenate([y for _, y in tb])
for rule in rules:
    scheme = replace(opts, range_rule=rule).make_scheme(); widths = opts.widths(scheme)
    plan = round_once(plan_for(scheme, ranges, widths, {c: None for c in widths}), sources, ties)
    m = simulate(prepared, plan)
    oc = _outputs(m, cb, None); ot = _outputs(m, tb, None)
    print(f'{rule}: calib kl {divergence(ref_c, oc):.5f} | held-out top1 {(ot.argmax(1)==yt).mean():.4f} agree {(ot.argmax(1)==ref_t.argmax(1)).mean():.4f} kl {divergence(ref_t, ot):.5f}', flush=True)
