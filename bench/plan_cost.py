"""The search's cost per plan, this tree against another one (e.g. a git worktree of main).

One plan's cost is what ``compress`` pays around each candidate's evaluation: apply the plan to
the Simulator, lower it and build (or reuse) its onnxruntime session, and score one batch. The
plan sequence mimics a layer-wise search: every plan narrows one weights group by one bit
(a new session in parametric mode) and moves the activation formats (a reused session).

Both implementations run in worker processes launched alternately in ONE run, so they share the
machine's load; the script prints the median per plan of each and the ratios new/old, of the
process CPU time (onnxruntime's threads included; robust when other jobs share the cores) and
of the wall time, for the whole plan and for the lowering alone (apply plan + lower)::

    git worktree add /tmp/ristretto-main main
    python bench/plan_cost.py --old /tmp/ristretto-main --model squeezenet1.1-imagenet
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(model: str, plans: int, batch: int, rounds: int) -> dict:
    import numpy as np

    from ristretto_onnx.formats import Fixed
    from ristretto_onnx.passes.pipeline import prepare
    from ristretto_onnx.runtime.simulator import Simulator

    path = os.path.join(os.environ.get("RISTRETTO_ZOO", ""), "models", f"{model}.onnx")
    prepared = prepare(path)
    sim = Simulator(prepared.annotated)
    inp = prepared.float_model.graph.input[0].type.tensor_type.shape.dim
    shape = [batch] + [d.dim_value for d in inp[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    groups = [g for layer in prepared.layers for g in layer.groups]
    weights = [g.id for g in groups if g.role == "weights"]
    sequence = []
    bits = {g: 16 for g in weights}
    for k in range(plans):
        bits[weights[k % len(weights)]] -= 1
        plan = {g.id: (Fixed(bits[g.id], bits[g.id] - 2) if g.role == "weights"
                       else Fixed(8, 4 - k % 3)) for g in groups if g.role != "bias"}
        sequence.append(plan)
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    times = {f"{part}_{c}": [[] for _ in sequence] for part in ("plan", "lower") for c in clocks}
    for _ in range(rounds):
        for k, plan in enumerate(sequence):
            t0 = {c: f() for c, f in clocks.items()}
            sim.set_formats(plan, replace=True)
            sim.lowered()
            t1 = {c: f() for c, f in clocks.items()}
            sim.run(x)
            for c, f in clocks.items():
                times[f"plan_{c}"][k].append(f() - t0[c])
                times[f"lower_{c}"][k].append(t1[c] - t0[c])
    return {key: [statistics.median(t) for t in per_plan] for key, per_plan in times.items()}


def run_worker(tree: Path | None, args) -> dict:
    env = dict(os.environ)
    if tree is not None:  # import the other implementation first
        env["PYTHONPATH"] = str(_importable(tree))
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, __file__, "--worker", out.name, "--model", args.model,
                        "--plans", str(args.plans), "--batch", str(args.batch),
                        "--rounds", str(args.rounds)], env=env, check=True, cwd="/")
        return json.loads(Path(out.name).read_text())


def _importable(tree: Path) -> Path:
    """A folder where ``ristretto_onnx`` of ``tree`` imports with passes/runtime/zoo inside."""
    pkg = tree / "ristretto_onnx"
    for sub in ("passes", "runtime", "zoo"):
        link = pkg / sub
        if not link.exists():
            link.symlink_to(Path("..") / sub)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, help="source tree of the implementation to compare with")
    ap.add_argument("--model", default="resnet20-cifar10")
    ap.add_argument("--plans", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="passes over the plans per worker")
    ap.add_argument("--repeats", type=int, default=2, help="workers per implementation")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.worker).write_text(json.dumps(worker(args.model, args.plans, args.batch, args.rounds)))
        return
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for _ in range(args.repeats):
        for label, tree in (("old", args.old), ("new", None)):
            runs[label].append(run_worker(tree, args))
    print(f"{args.model}: {args.plans} plans x {args.rounds} rounds x {args.repeats} workers, "
          f"batch {args.batch}; median ms per plan")
    for key in ("plan_cpu", "plan_wall", "lower_cpu", "lower_wall"):
        total = {}
        for label, results in runs.items():
            per_plan = [statistics.median(col) for col in zip(*(r[key] for r in results))]
            total[label] = sum(per_plan) / len(per_plan)
        print(f"  {key:<10} old {1e3 * total['old']:8.1f}  new {1e3 * total['new']:8.1f}  "
              f"ratio new/old {total['new'] / total['old']:.3f}")


if __name__ == "__main__":
    main()
