"""Peak memory of ``quantize`` and ``compress`` on a synthetic 2.5 GB model (issue 10, Deliver 8).

Not a CI test: it writes about 5 GB to a scratch folder and needs a few GB of memory. The model is
an MLP on 8x8 grayscale images (Flatten, Gemm 64->20000->20000->11000->10 with ReLUs), 2.49 GB of
float32 weights, so it is stored with external data. Each command runs in its own Python process
that reports its peak resident memory (``ru_maxrss``: Python, numpy and onnxruntime's native
allocations together); the ratio to the model's size is printed next to the 2x goal.

    nice -n 10 python bench/external_data.py [--folder /tmp/ristretto-big] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

SIZES = (64, 20000, 20000, 11000, 10)

CHILD = """
import json, resource, sys, time
from ristretto_onnx.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t,
                  "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def build_model(folder: Path) -> tuple[Path, int]:
    """Write the synthetic MLP with external data; returns its path and weight bytes.

    The weights are generated and written block by block straight into ``big.onnx.data`` (4 KiB
    aligned, as the project writes them), so building the model needs little memory either."""
    from ristretto_onnx.ops import MIN_IR_VERSION

    rng = np.random.default_rng(0)
    path, data_name = folder / "big.onnx", "big.onnx.data"
    nodes = [helper.make_node("Flatten", ["input"], ["h0"])]
    inits = []
    offset = 0
    with open(folder / data_name, "wb") as f:
        for i, (n_in, n_out) in enumerate(zip(SIZES, SIZES[1:])):
            for name, shape in ((f"w{i}", (n_out, n_in)), (f"b{i}", (n_out,))):
                pad = (-offset) % 4096
                f.write(b"\0" * pad)
                offset += pad
                rows = max(1, (16 << 20) // (4 * n_in))
                for start in range(0, shape[0], rows):
                    n = min(rows, shape[0] - start)
                    if name.startswith("w"):
                        block = rng.standard_normal((n, n_in), dtype=np.float32)
                        block *= np.float32(np.sqrt(2.0 / n_in))
                    else:
                        block = np.zeros(n, np.float32)
                    f.write(block.astype("<f4").tobytes())
                length = int(np.prod(shape)) * 4
                t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape,
                                data_location=TensorProto.EXTERNAL)
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    t.external_data.add(key=key, value=value)
                inits.append(t)
                offset += length
            nodes.append(helper.make_node("Gemm", [f"h{2 * i}", f"w{i}", f"b{i}"], [f"h{2 * i + 1}"], transB=1,
                                          name=f"fc{i}"))
            if i < len(SIZES) - 2:
                nodes.append(helper.make_node("Relu", [f"h{2 * i + 1}"], [f"h{2 * i + 2}"]))
    last = nodes[-1].output[0]
    graph = helper.make_graph(nodes, "big_mlp",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", SIZES[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = MIN_IR_VERSION  # what the project writes (onnxruntime here reads <= 10-13)
    path.write_bytes(model.SerializeToString())  # the weights are already in big.onnx.data
    weight_bytes = sum(int(np.prod(t.dims)) * 4 for t in inits)
    return path, weight_bytes

def check_output(out: Path, model: Path) -> str:
    """The written model's data file is consistent: it loads and validates (every external tensor
    inside its file, sizes matching shapes), and its weights equal the input's byte for byte,
    compared in chunks (biases may differ: bias correction)."""
    from ristretto_onnx.passes.external import is_external, row_chunks, tensor_rows
    from ristretto_onnx.passes.load import load_model

    written, source = load_model(out), load_model(model)
    inputs = {t.name: t for t in source.graph.initializer}
    same, changed = [], []
    for t in written.graph.initializer:
        if not is_external(t) or t.name not in inputs:
            continue
        equal = list(t.dims) == list(inputs[t.name].dims) and all(
            np.array_equal(tensor_rows(t, a, b), tensor_rows(inputs[t.name], a, b)) for a, b in row_chunks(t))
        (same if equal else changed).append(t.name)
    return (f"output loads and validates; {len(same)} external tensors equal the input's "
            f"({', '.join(same)}), changed: {', '.join(changed) or 'none'}")


def run(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    result = json.loads(last) if last.startswith("{") else {"code": proc.returncode}
    if result.get("code") != 0:
        result["stderr"] = f"returncode {proc.returncode}; " + proc.stderr.strip()[-500:]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="Keep the scratch folder.")
    ap.add_argument("--only", choices=("quantize", "compress"), help="Run one command only.")
    ap.add_argument("--model", type=Path, help="Reuse a model written by an earlier --keep run.")
    args = ap.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="ristretto-big-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        if args.model:
            model = args.model
            weight_bytes = sum(int(np.prod(t.dims)) * 4 for t in onnx.load(str(model), load_external_data=False).graph.initializer)
        else:
            model, weight_bytes = build_model(folder)
        print(f"model: {weight_bytes / 1e9:.2f} GB of weights, ready in {time.perf_counter() - t:.0f} s", flush=True)
        rng = np.random.default_rng(1)
        np.savez(folder / "data.npz", images=rng.integers(0, 256, (32, 8, 8), dtype=np.uint8),
                 labels=rng.integers(0, 10, 32))
        data = str(folder / "data.npz")
        runs = {
            "quantize": ["quantize", str(model), str(folder / "q.onnx"), "--scheme", "dfp", "--bits", "8",
                         "--calib", data, "--scale", "1/255"],
            "compress": ["compress", str(model), str(folder / "c.onnx"), "--data", data, "--metric", "fidelity",
                         "--min-bits", "8", "--max-bits", "8", "-q", "--scale", "1/255"],
        }
        for name, argv in runs.items():
            if args.only and name != args.only:
                continue
            r = run(argv)
            if r.get("code") != 0:
                print(f"{name}: FAILED (exit {r.get('code')}): {r.get('stderr', '')}")
                continue
            out = folder / ("q.onnx" if name == "quantize" else "c.onnx")
            data_file = out.with_name(out.name + ".data")
            print(f"{name}: peak {r['peak_bytes'] / 1e9:.2f} GB = {r['peak_bytes'] / weight_bytes:.2f}x the model "
                  f"(goal < 2x), {r['seconds']:.0f} s; wrote {out.name} + {data_file.name} "
                  f"({data_file.stat().st_size / 1e9:.2f} GB)", flush=True)
            print(f"{name}: {check_output(out, model)}", flush=True)
            for p in (out, data_file, out.with_suffix(".json")):
                p.unlink(missing_ok=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
