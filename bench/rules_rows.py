"""The issue-15 accuracy rules in the onnxruntime comparison of bench/reproduce.py.

``our_int8`` there builds 8-bit dfp plans from the range rules alone (the thesis's flow); these
rows run the public :func:`ristretto_onnx.quantize.quantize` with its defaults (range rule
``auto``, unsigned codes after ReLU, layer outputs rounded once, bias correction ``auto``:
none, the weights' or the measured output error) at 8/8/8, weights per tensor,
per channel (``output`` rule) and chosen per layer (``auto``), on the same calibration images
and scored on the same test batches as onnxruntime's quantize_static rows.
"""

from __future__ import annotations

import time

from bench.common import Bench, evaluate_session
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.runtime.session import create_session

#: The rule name these rows carry (reproduce_report's verdict looks them up by it).
RULES = "auto, issue-15 rules"
GRANULARITIES = ("tensor", "channel", "auto")


def rules_int8(bench: Bench, log, granularities=GRANULARITIES) -> list[dict]:
    rows = []
    for g in granularities:
        weights = {"tensor": "per tensor", "channel": "per channel"}.get(g, "per tensor or channel by layer (auto)")
        label = (f"ristretto dfp 8/8/8, quantize defaults (range rule auto, unsigned codes, rounded once, "
                 f"bias correction auto), weights {weights}")
        try:
            t = time.perf_counter()
            opts = QuantizeOptions(scheme="dfp", bits=8, weight_granularity=g, calib_size=len(bench.calib),
                                   batch_size=bench.spec.batch_size)
            res = quantize(bench.table.prepared, opts, bench.calib)
            session = create_session(res.model)
            seconds = time.perf_counter() - t
        except (RistrettoError, ValueError, NotImplementedError) as e:
            rows.append({"label": label, "error": f"{type(e).__name__}: {e}"})
            continue
        acc, eval_seconds = evaluate_session(session, bench.test_batches())
        rows.append({"label": label, "rule": RULES, "granularity": g, "accuracy": acc, "quantize_seconds": seconds,
                     "eval_seconds": eval_seconds, "bias_correction": res.bias_correction,
                     "range_rule": res.options.range_rule})
        log(f"    {label}: {acc:.4f}")
    return rows
