"""Where the written model's time goes in a stock onnxruntime session (issue 14).

    python bench/written_profile.py [--model resnet20-cifar10] [--scheme dfp] [--runs 4]

Writes the model as ``bench/bench_kernels.py`` does (8 bits, the scheme's plan), runs FP32 and
the written model in stock sessions (no kernel library, onnxruntime's default optimizations)
with onnxruntime's profiler and prints, per op type of the graph onnxruntime actually runs, the
node count and the kernel time per batch. The quantizer bodies' ops that onnxruntime does not
fold into the convolutions (Round, Mul, the unfused Clips) and the NCHWc reorders they cause
are what separates the two. RISTRETTO_ZOO must point at the zoo.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import MODELS, plans  # noqa: E402

from ristretto_onnx import zoo  # noqa: E402
from ristretto_onnx.passes.pipeline import prepare, simulate  # noqa: E402
from ristretto_onnx.runtime.session import session_options  # noqa: E402


def profile(model, x: np.ndarray, runs: int, folder: str) -> tuple[Counter, Counter]:
    """``(milliseconds per run, nodes)`` per op type of the optimized graph."""
    so = session_options()
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(folder) / "profile")
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: x})  # the warm-up run is profiled too: times are per run of runs + 1
    for _ in range(runs):
        session.run(None, {name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    time, nodes = Counter(), Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            time[e["args"]["op_name"]] += e["dur"] / 1000 / (runs + 1)
            nodes[e["args"]["op_name"]] += 1
    return time, Counter({k: v // (runs + 1) for k, v in nodes.items()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20-cifar10")
    ap.add_argument("--scheme", default="dfp")
    ap.add_argument("--runs", type=int, default=4)
    args = ap.parse_args(argv)
    batch = MODELS.get(args.model, 64)
    prepared = prepare(str(zoo.resolve_model(f"zoo:{args.model}")))
    written = simulate(prepared, plans(prepared, zoo.model_dataset(args.model, "calib").take(256))[args.scheme])
    x = np.ascontiguousarray(next(iter(zoo.model_dataset(args.model, "test").take(batch).batches(batch)))[0])
    with tempfile.TemporaryDirectory(prefix="ristretto-profile-") as folder:
        rows = {"fp32": profile(prepared.float_model, x, args.runs, folder),
                f"{args.scheme} written": profile(written, x, args.runs, folder)}
    for key, (time, nodes) in rows.items():
        conv = time.get("Conv", 0.0)
        print(f"{key}: {sum(time.values()):.1f} ms per batch of {batch} (Conv {conv:.1f}, "
              f"everything else {sum(time.values()) - conv:.1f})")
        print("  " + ", ".join(f"{op} {nodes[op]}x {t:.1f}" for op, t in time.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
