"""The candidates of ``--bias-correction auto`` side by side: calibration divergence vs held-out top-1.

For one network, widths and range rule: the plan of :func:`ristretto_onnx.quantize.quantize`
without bias correction, then none / ``weights`` (passes.bias_correction) / ``outputs``
(ristretto_onnx.output_bias) on it. Each row prints what ``auto`` decides by (top-1, agreement
with FP32 and KL divergence from FP32 on the calibration images) and, afterwards, the top-1 on
the scored images (never used by any choice). Splits as bench/accuracy.py.

Run: ``nice -n 10 python bench/bias_candidates.py lenet-mnist 4 max [--measure 256]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.accuracy import splits  # noqa: E402
from ristretto_onnx import zoo  # noqa: E402
from ristretto_onnx.moments import input_means  # noqa: E402
from ristretto_onnx.output_bias import divergence, output_error_deltas  # noqa: E402
from ristretto_onnx.passes.bias_correction import apply_bias_correction, weight_error_means  # noqa: E402
from ristretto_onnx.passes.pipeline import prepare, simulate  # noqa: E402
from ristretto_onnx.quantize import QuantizeOptions, quantize  # noqa: E402
from ristretto_onnx.runtime.session import create_session  # noqa: E402


def outputs(model, data, batch: int = 250) -> tuple[np.ndarray, np.ndarray]:
    sess = create_session(model)
    name = sess.get_inputs()[0].name
    out, labels = [], []
    for x, y in data.batches(batch):
        out.append(sess.run(None, {name: np.ascontiguousarray(x, np.float32)})[0])
        labels.append(y)
    return np.concatenate(out).reshape(len(data), -1).astype(np.float64), np.concatenate(labels)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("net", help="zoo name, e.g. lenet-mnist, resnet20-cifar10, squeezenet1.1-imagenet")
    ap.add_argument("bits", type=int)
    ap.add_argument("rule", help="range rule: mse, max, percentile:P")
    ap.add_argument("--measure", type=int, default=256, help="calibration images the outputs correction measures on")
    a = ap.parse_args(argv)
    calib, scored = splits(a.net, 500)
    path = str(zoo.get_model(a.net).locate())
    fp_c, y_c = outputs(path, calib)
    fp_t, y_t = outputs(path, scored)
    print(f"{a.net}: FP32 top-1 {(fp_t.argmax(1) == y_t).mean():.4f} on {len(scored)} scored images", flush=True)
    opts = QuantizeOptions(scheme="dfp", bits=a.bits, range_rule=a.rule, calib_size=len(calib), batch_size=32,
                           bias_correction="off", weight_rounding="nearest")
    plan = quantize(f"zoo:{a.net}", opts, calib).plan
    prepared = prepare(path)
    layers = prepared.layers.select((), ())
    sim = lambda d: simulate(apply_bias_correction(prepared.annotated, layers, d), plan)  # noqa: E731
    t = time.perf_counter()
    weights = weight_error_means(prepared.float_model, layers, plan,
                                 input_means(prepared.float_model, layers, calib, batch_size=64))
    sub = [np.ascontiguousarray(x, np.float32) for x, _ in calib.subset(min(a.measure, len(calib)), 0).batches(64)]
    measured = output_error_deltas(prepared.float_model, layers, sim, sub)
    print(f"  corrections computed in {time.perf_counter() - t:.0f} s", flush=True)
    for label, deltas in (("none", {}), ("weights", weights), ("outputs", measured)):
        q_c, _ = outputs(sim(deltas), calib)
        q_t, _ = outputs(sim(deltas), scored)
        print(f"  {label}: calibration top-1 {(q_c.argmax(1) == y_c).mean():.4f}, agreement "
              f"{(q_c.argmax(1) == fp_c.argmax(1)).mean():.4f}, KL {divergence(fp_c, q_c):.5f} | "
              f"scored top-1 {(q_t.argmax(1) == y_t).mean():.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
