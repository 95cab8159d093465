"""Layer-wise mixed precision on real networks (issue 15, deliver 5): weight memory vs accuracy.

``compress --granularity layer`` (thesis 9.2 searches one width per category; the layer stage of
:mod:`ristretto_onnx.search` then lowers each layer's weights on its own) against the
per-category search (``--granularity group``), both with the same data:

* ResNet-20/32 / CIFAR-10: calibrated on seeded training images, searched on a seeded subset of
  the test split, scored once on other test images (disjoint from the searched ones);
* SqueezeNet 1.1 / ImageNet sample: one seeded half searched (calibration: a subset of it),
  the other half scored.

Run: ``nice -n 10 python bench/layerwise.py resnet20 [--search 1000] [--test 4000] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ristretto_onnx import zoo  # noqa: E402
from ristretto_onnx.compress import compress  # noqa: E402

NETS = {"resnet20": "resnet20-cifar10", "resnet32": "resnet32-cifar10", "lenet": "lenet-mnist",
        "squeezenet": "squeezenet1.1-imagenet"}


def data_for(name: str, search: int, test: int, calib: int):
    """(calibration, searched, scored): the scored images are never calibrated on or searched."""
    full = zoo.model_dataset(name, "test")
    if name.startswith("squeezenet"):
        half, other = full.split(len(full) // 2, seed=0)
        return half.subset(min(calib, len(half)), seed=1), half.subset(min(search, len(half)), seed=2), \
            other.subset(min(test, len(other)), seed=3)
    searched, rest = full.split(search, seed=0)
    return zoo.model_dataset(name, "calib").subset(calib, seed=0), searched, rest.subset(min(test, len(rest)), seed=1)


def run(net: str, *, granularities=("group", "layer"), weight_granularity: str = "tensor", search: int = 1000,
        test: int = 4000, calib: int = 500, tolerance: float = 0.01, batch_size: int = 250, log=print) -> list[dict]:
    name = NETS[net]
    calib_ds, searched, scored = data_for(name, search, test, calib)
    rows = []
    for g in granularities:
        t = time.perf_counter()
        res = compress(f"zoo:{name}", searched, calib=calib_ds, test=scored, tolerance=tolerance, granularity=g,
                       weight_granularity=weight_granularity, calib_size=len(calib_ds), batch_size=batch_size)
        rep = res.report
        weights = {gr.group: gr.bits for gr in rep.groups if gr.role == "weights"}
        rows.append({"net": net, "granularity": g, "weight_granularity": weight_granularity,
                     "weight_kib": round(rep.weight_bytes / 1024, 2), "fp32_kib": round(rep.weight_bytes_fp32 / 1024, 2),
                     "weight_bits_mean": round(rep.weight_bits_mean, 3),
                     "categories": {k: v["bits"] for k, v in rep.categories.items()},
                     "search_fp32": rep.baseline, "search_final": rep.final, "searched": rep.n_images,
                     "test_fp32": rep.test_baseline, "test_final": rep.test_final, "tested": rep.n_test_images,
                     "calibrated": len(calib_ds), "plans": rep.plans_scored, "layer_bits": weights,
                     "seconds": round(time.perf_counter() - t, 1)})
        r = rows[-1]
        log(f"{net} {g}/{weight_granularity}: {r['weight_kib']} KiB ({r['weight_bits_mean']} bits mean) "
            f"{r['categories']}; search {r['search_fp32']:.4f}->{r['search_final']:.4f} on {r['searched']}, "
            f"test {r['test_fp32']:.4f}->{r['test_final']:.4f} on {r['tested']}; {r['plans']} plans, "
            f"{r['seconds']} s; layers {sorted(set(weights.values()))}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nets", nargs="*", default=["resnet20", "squeezenet"])
    ap.add_argument("--granularities", default="group,layer")
    ap.add_argument("--weight-granularity", default="tensor")
    ap.add_argument("--search", type=int, default=1000)
    ap.add_argument("--test", type=int, default=4000)
    ap.add_argument("--calib", type=int, default=500)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    rows = []
    for net in a.nets:
        rows += run(net, granularities=tuple(a.granularities.split(",")), weight_granularity=a.weight_granularity,
                    search=a.search, test=a.test, calib=a.calib, tolerance=a.tolerance,
                    batch_size=32 if net.startswith("squeezenet") else 250)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
