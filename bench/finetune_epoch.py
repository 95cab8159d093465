"""One fine-tuning epoch of ResNet-20 on the 10,000-image CIFAR-10 training file (issue 12).

    RISTRETTO_ZOO=/work/shared/zoo python bench/finetune_epoch.py [--device cpu] [--epochs 1]

Quantizes resnet20-cifar10 to dynamic fixed point with 4-bit weights and 8-bit layer inputs and
outputs (thesis table 5.2 layout, quantize's default range rule), fine-tunes it for one epoch (the
thesis's procedure: shadow weights, stochastic rounding, float layer outputs, Adam) and prints
one JSON line: seconds of training and of the exact scoring on the 10,000 test images, the
accuracy after (before), and the machine's load average, which decides the wall times on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ristretto_onnx import zoo  # noqa: E402
from ristretto_onnx.finetune.trainer import FinetuneOptions, finetune  # noqa: E402
from ristretto_onnx.quantize import QuantizeOptions, quantize  # noqa: E402


def simulated_resnet20(weight_bits: int = 4, act_bits: int = 8):
    calib = zoo.model_dataset("resnet20-cifar10", "calib")
    q = QuantizeOptions(scheme="dfp", weight_bits=weight_bits, act_bits=act_bits, calib_size=500)
    return quantize(str(zoo.resolve_model("zoo:resnet20-cifar10")), q, calib).model


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs in the "
                    "affinity mask)")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()
    t = time.perf_counter()
    sim = simulated_resnet20()
    prep = time.perf_counter() - t
    opts = FinetuneOptions(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, device=args.device,
                           train_size=args.train_size, threads=args.threads)
    r = finetune(sim, zoo.model_dataset("resnet20-cifar10", "train"),
                 zoo.model_dataset("resnet20-cifar10", "test"), options=opts,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    out = {
        "bench": "finetune_epoch", "model": "resnet20-cifar10", "plan": "dfp 4-bit weights, 8-bit activations",
        "device": r.device, "n_train": r.n_train, "n_score": r.n_score, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr,
        "epoch_train_seconds": [round(e.train_seconds, 1) for e in r.epochs[1:]],
        "epoch_train_cpu_seconds": [round(e.train_cpu_seconds, 1) for e in r.epochs[1:]],
        # wall time on free cores ~ CPU time / threads; per 10,000 images for --train-size runs
        "epoch_10k_free_cores_estimate_seconds": [round(e.train_cpu_seconds / len(os.sched_getaffinity(0))
                                                        * 10000 / r.n_train, 1) for e in r.epochs[1:]],
        "score_seconds": [round(e.score_seconds, 1) for e in r.epochs],
        "quantize_seconds": round(prep, 1),
        "fp32": r.fp32, "before": r.before, "after": r.after, "headline": r.headline,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpus": len(os.sched_getaffinity(0)), "threads": args.threads or len(os.sched_getaffinity(0)), "load_average_start": [round(x, 2) for x in load0],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
