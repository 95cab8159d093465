"""How the QDQ export behaves under onnxruntime's session settings (issue 13, deliver 1).

    python bench/qdq_sessions.py              # resnet20-cifar10 at dfp 8, 2,000 test images
    python bench/qdq_sessions.py --images 10000 --model lenet-mnist

The QDQ export reproduces the simulated model exactly only where onnxruntime computes what the
graph says. Measured in one run against the simulated model (run with the project's session:
all optimizations, ``session.disable_quant_qdq=1``):

* ``project``: the same settings for the QDQ model;
* ``disable_all``: ``ORT_DISABLE_ALL``, plain kernels, no rewriting at all;
* ``default``: a default ``InferenceSession`` (``ORT_ENABLE_ALL`` with QDQ fusion): Q/DQ around
  Conv/Gemm/Add become QLinearConv/QGemm/QLinearAdd, integer kernels that quantize the float
  bias themselves and accumulate in int32;

for each: the largest absolute output difference, the share of outputs that differ, top-1
agreement with the simulated model, top-1 accuracy, and images/s relative to the simulated model.
Results go to ``bench/out/qdq_sessions.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ristretto_onnx.cli import main as cli


def _session(path: Path, kind: str) -> ort.InferenceSession:
    from ristretto_onnx.runtime.session import available_cpus, create_session

    if kind == "project":
        return create_session(path, providers=["CPUExecutionProvider"])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = available_cpus()
    if kind == "disable_all":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: np.ndarray, batch: int = 500) -> tuple[np.ndarray, float]:
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    out = np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])
    return out, len(x) / (time.perf_counter() - start)


def main() -> None:
    from ristretto_onnx.zoo import model_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20-cifar10")
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    data = model_dataset(args.model, "test").take(args.images)
    x = np.concatenate([b for b, _ in data.batches(500)])
    labels = data.labels
    with tempfile.TemporaryDirectory() as tmp:
        sim, qdq = Path(tmp) / "sim.onnx", Path(tmp) / "qdq.onnx"
        assert cli(["quantize", f"zoo:{args.model}", str(sim), "--scheme", "dfp", "--bits", "8"]) == 0
        assert cli(["export", str(sim), str(qdq), "--to", "qdq"]) == 0
        ref, ref_speed = _run(_session(sim, "project"), x)
        rows = {"simulated": {"top1": float(np.mean(ref.argmax(1) == labels)), "images_per_s": ref_speed}}
        for kind in ("project", "disable_all", "default"):
            out, speed = _run(_session(qdq, kind), x)
            rows[kind] = {"max_abs_diff": float(np.abs(out - ref).max()),
                          "outputs_differing": float(np.mean(out != ref)),
                          "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
                          "top1": float(np.mean(out.argmax(1) == labels)),
                          "speed_vs_simulated": speed / ref_speed}
    result = {"model": args.model, "images": len(x), "sessions": rows}
    out_dir = Path(__file__).parent / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "qdq_sessions.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
