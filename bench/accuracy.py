"""Accuracy rules of issue 15, before/after, on the zoo (calibration never on the scored images).

Each row quantizes one network with one configuration through the public API
(:func:`ristretto_onnx.quantize.quantize`) and scores it with a plain onnxruntime session:

* LeNet / MNIST: calibrated on the training split, scored on the 10,000 test images;
* ResNet-20 / CIFAR-10: calibrated on the training split, scored on the 10,000 test images;
* SqueezeNet 1.1 / ImageNet sample: the 1,000 images split in two seeded halves, calibrated on
  one and scored on the other.

``--granularity tensor,channel,auto`` runs each row with per-tensor, per-channel and per-layer
chosen (``auto``, ristretto_onnx.granularity_rule) weights. ``--ort`` adds onnxruntime's
quantize_static (uint8 activations, int8 weights, MinMax / Percentile / Entropy, per tensor and
per channel) calibrated and scored on the same images.

Run: ``nice -n 10 python bench/accuracy.py [lenet] [resnet20] [squeezenet] [--ort] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ristretto_onnx import zoo  # noqa: E402
from ristretto_onnx.quantize import QuantizeOptions, quantize  # noqa: E402
from ristretto_onnx.runtime.session import create_session  # noqa: E402

NETS = {
    "lenet": ("lenet-mnist", [dict(weight_bits=4, act_bits=4)]),
    "resnet20": ("resnet20-cifar10", [dict(weight_bits=6, act_bits=6)]),
    "squeezenet": ("squeezenet1.1-imagenet", [dict(weight_bits=8, act_bits=8)]),
}
#: Each rule off (before) and on (after); each row adds one thing to the one above it. The rows
#: before adaptive weight rounding pin ``weight_rounding="nearest"`` (measured so; the default is
#: now ``auto``: ``rounding_auto`` is the defaults).
def _nearest(**options) -> dict:
    return dict(options, weight_rounding="nearest")


VARIANTS = {
    "signed": ("signed codes (thesis)", _nearest(unsigned=False, round_once=False, bias_correction="off")),
    "ufixed": ("+ ufixed after ReLU", _nearest(unsigned=True, round_once=False, bias_correction="off")),
    "once": ("+ outputs rounded once", _nearest(unsigned=True, round_once=True, bias_correction="off")),
    "bc": ("+ bias correction", _nearest(unsigned=True, round_once=True, bias_correction="on")),
    "auto": ("+ bias correction auto", _nearest(unsigned=True, round_once=True, bias_correction="auto")),
    "adaptive": ("+ adaptive weight rounding", dict(unsigned=True, round_once=True, bias_correction="auto",
                                                 weight_rounding="adaptive")),
    "rounding_auto": ("+ weight rounding auto", dict(unsigned=True, round_once=True, bias_correction="auto",
                                                     weight_rounding="auto")),
    "outputs": ("bias correction outputs", _nearest(unsigned=True, round_once=True, bias_correction="outputs")),
    "refine": ("+ refined by the output error", _nearest(unsigned=True, round_once=True, bias_correction="auto",
                                                         refine=True)),
    "refine_nobc": ("refined, bias correction off", _nearest(unsigned=True, round_once=True, bias_correction="off",
                                                             refine=True)),
    "range": ("per-channel range rule (before)", _nearest(weight_granularity="channel", channel_rule="range",
                                                          bias_correction="off")),
    "output": ("per-channel output rule", _nearest(weight_granularity="channel", channel_rule="output",
                                                   bias_correction="off")),
}


def splits(name: str, calib_size: int):
    """(calibration set, scored set): disjoint."""
    test = zoo.model_dataset(name, "test")
    if name.startswith("squeezenet"):
        calib, scored = test.split(len(test) // 2, seed=0)
        return calib, scored
    return zoo.model_dataset(name, "calib").subset(calib_size, seed=0), test


def top1(model, data, batch: int = 250) -> float:
    sess = create_session(model)
    inp = sess.get_inputs()[0].name
    hits = 0
    for x, y in data.batches(batch):
        hits += int((sess.run(None, {inp: np.ascontiguousarray(x, np.float32)})[0].argmax(1) == y).sum())
    return hits / len(data)


def ort_rows(model_path: Path, calib, scored, work: Path, granularities=("tensor", "channel")) -> list[dict]:
    from bench import ort_quant

    pre = ort_quant.preprocess_for_quantization(model_path, work)
    batches = [np.ascontiguousarray(x, np.float32) for x, _ in calib.batches(50)]
    rows = []
    for cfg in ort_quant.default_configs():
        if ("channel" if cfg.per_channel else "tensor") not in granularities:
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            q = ort_quant.quantize(pre, create_session(str(model_path)).get_inputs()[0].name, batches, cfg, work)
        rows.append({"config": f"onnxruntime int8 {cfg.label}", "top1": top1(str(q.path), scored)})
    return rows


def run(net: str, *, rules=("max", "mse"), variants=tuple(VARIANTS), granularities=("tensor",),
        ort: bool = False, calib_size: int = 500, bits: int | None = None, ort_granularities=("tensor", "channel"),
        log=print) -> list[dict]:
    name, widths = NETS[net]
    widths = widths if bits is None else [dict(weight_bits=bits, act_bits=bits)]
    calib, scored = splits(name, calib_size)
    path = zoo.get_model(name).locate()
    rows = [{"net": net, "config": "FP32", "top1": top1(str(path), scored)}]
    log(f"{net}: FP32 {rows[0]['top1']:.4f} on {len(scored)} images, calibrated on {len(calib)}", flush=True)
    for w, rule, granularity, key in ((w, r, g, k) for w in widths for r in rules for g in granularities
                                       for k in variants):
        label, extra = VARIANTS[key]
        t = time.perf_counter()
        opts = QuantizeOptions(scheme="dfp", range_rule=rule, calib_size=len(calib), batch_size=32,
                               **{"weight_granularity": granularity, **w, **extra})
        res = quantize(f"zoo:{name}", opts, calib)
        acc = top1(res.model, scored)
        n_u = sum(1 for f in res.plan.values() if f is not None and f.kind == "ufixed")
        n_c = sum(1 for f in res.plan.values() if f is not None and f.kind == "per-channel")
        chosen = f"{rule}->{res.options.range_rule}" if rule == "auto" else rule
        rows.append({"net": net, "config": f"dfp {w['act_bits']}/{w['weight_bits']} {opts.weight_granularity} "
                     f"{chosen} {label}", "top1": acc, "ufixed_groups": n_u, "per_channel_layers": n_c,
                     "bias_correction": res.bias_correction, "range_rule": res.options.range_rule,
                     "weight_rounding": res.options.weight_rounding, "seconds": round(time.perf_counter() - t, 1)})
        log(f"  {rows[-1]['config']}: {acc:.4f} ({n_u} ufixed groups, {n_c} per-channel layers, bias correction "
            f"{res.bias_correction}, weight rounding {res.options.weight_rounding}, {rows[-1]['seconds']} s)",
            flush=True)
    if ort:
        import tempfile
        with tempfile.TemporaryDirectory() as work:
            for r in ort_rows(path, calib, scored, Path(work), ort_granularities):
                rows.append({"net": net, **r})
                log(f"  {r['config']}: {r['top1']:.4f}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nets", nargs="*", default=list(NETS))
    ap.add_argument("--rules", default="max,mse")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--granularity", default="tensor")
    ap.add_argument("--ort", action="store_true")
    ap.add_argument("--ort-granularity", default="tensor,channel", help="onnxruntime rows: tensor, channel or both")
    ap.add_argument("--bits", type=int, help="every width (default: the acceptance widths of the network)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    rows = []
    for net in a.nets:
        rows += run(net, rules=tuple(a.rules.split(",")), variants=tuple(v for v in a.variants.split(",") if v),
                    granularities=tuple(a.granularity.split(",")), ort=a.ort, bits=a.bits,
                    ort_granularities=tuple(a.ort_granularity.split(",")))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
