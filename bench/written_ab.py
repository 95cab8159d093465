"""Two written models of one zoo network against FP32, interleaved in one process (issue 14).

    python bench/written_ab.py A.onnx B.onnx [--model resnet20-cifar10] [--rounds 9]

On a shared machine the cells of ``bench/bench_kernels.py`` move by more than a small change
between runs; this runs FP32 and both files in stock sessions (no kernel library) and in project
sessions with the library, every round in turn on the same batches, and prints each one's
median and best round as simulated / FP32, by wall time and by process CPU time (with the load
average). Write A and B with two versions of the code (e.g. ``quantize`` or ``compress`` output
before and after a change). RISTRETTO_ZOO must point at the zoo.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import MODELS, _runner, measure  # noqa: E402

from ristretto_onnx import zoo  # noqa: E402
from ristretto_onnx.passes.pipeline import prepare  # noqa: E402
from ristretto_onnx.runtime.session import create_session  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--model", default="resnet20-cifar10")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batches", type=int, default=2)
    args = ap.parse_args(argv)
    batch = MODELS.get(args.model, 64)
    data = zoo.model_dataset(args.model, "test").take(batch * args.batches)
    batches = [np.ascontiguousarray(x) for x, _ in data.batches(batch)][:args.batches]
    fp32 = prepare(str(zoo.resolve_model(f"zoo:{args.model}"))).float_model
    inp = fp32.graph.input[0].name
    runners = {"fp32": _runner(create_session(fp32, kernels=False), inp)}
    for key, path in (("A", args.a), ("B", args.b)):
        model = onnx.load(path)
        runners[key] = _runner(create_session(model, kernels=False), inp)
        runners[f"{key}+lib"] = _runner(create_session(model), inp)
    load = os.getloadavg()[0]
    _, _, every = measure(runners, batches, args.rounds)
    print(f"{args.model}, batch {batch}, {args.batches} batches x {args.rounds} interleaved rounds, "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}; simulated / FP32, median (best round):")
    for key in runners:
        cells = []
        for clock in ("wall", "cpu"):
            v, f = every[clock][key], every[clock]["fp32"]
            cells.append(f"{clock} {np.median(v) / np.median(f):.2f} ({max(v) / max(f):.2f})")
        print(f"  {key:<6} " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
