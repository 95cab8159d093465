"""GPU check of the QuantizeSim kernel library (issue 14), one script for a machine with a GPU.

    python bench/device_kernels.py FOLDER [--bench-seconds N]

FOLDER holds what ``ristretto-onnx kernels --build`` made with nvcc (sm_90 for the H200):
``libristretto_kernels_cuda.so`` and ``qsim_cuda_test``. Nothing in it is committed anywhere.

1. Standalone (no onnxruntime needed): ``qsim_cuda_test`` runs the CUDA kernel on random float32
   bit patterns, specials, ties, binade and saturation edges for every format of the op tests'
   grid, per-channel fixed and pow2, and stochastic rounding; results must equal the numpy
   reference bit for bit (stochastic: equal to the CPU kernel with the same seed, when
   onnxruntime can load the CPU kernel from the same library).
2. onnxruntime CUDA EP (only if ``onnxruntime`` lists CUDAExecutionProvider): the same values
   through sessions of nodes without function bodies, placement on the GPU, and the throughput
   ratios simulated / FP32 of bench/bench_kernels.py (GPU rows; needs RISTRETTO_ZOO).

Exit status 0 when every check that could run passed, 1 on a mismatch, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import ristretto_onnx  # noqa: E402

# Without an install, ristretto_onnx.runtime/passes/zoo live at the top of the checkout.
if str(ROOT) not in ristretto_onnx.__path__:
    ristretto_onnx.__path__.append(str(ROOT))

from ristretto_onnx.formats import PerChannel, Pow2, quantize  # noqa: E402
from ristretto_onnx.range_rules import dfp_channel_format  # noqa: E402


def _grid():
    """The op tests' grid and test vectors (tests/core/test_ops.py, which needs hypothesis)."""
    try:
        from tests.core.test_ops import GRID, SPECIALS, boundary_values, random_bit_patterns
    except ImportError:
        GRID, SPECIALS, boundary_values, random_bit_patterns = _grid_copy()
    grid = list(GRID) + UFIXED
    x = np.concatenate([random_bit_patterns(200_000, 5), SPECIALS] + [boundary_values(f) for f in grid])
    return grid, x.astype(np.float32)


#: Unsigned fixed point (added to the kernels after the GPU run of 2026-11-30: not yet checked on a GPU).
UFIXED = [f"ufixed:{b}:{f}" for b in (1, 2, 4, 7, 8, 9, 16) for f in sorted({-3, 0, 1, b // 2, b - 1, b, b + 3})]
UFIXED += ["ufixed:24:12", "ufixed:25:24", "ufixed:31:0", "ufixed:8:126", "ufixed:8:-119"]


def _grid_copy():
    from ristretto_onnx.formats import parse_format

    fixed = [f"fixed:{b}:{f}" for b in range(2, 17) for f in sorted({-3, 0, 1, b // 2, b - 1, b, b + 3, 20})]
    fixed += ["fixed:24:12", "fixed:25:24", "fixed:32:0", "fixed:32:16", "fixed:32:126", "fixed:8:126", "fixed:8:-120"]
    mini = [f"minifloat:{b}:{e}" for b in range(4, 17) for e in range(1, min(b - 1, 7) + 1)]
    mini += ["minifloat:2:1", "minifloat:3:1", "minifloat:3:2", "minifloat:24:7", "minifloat:31:7"]
    pow2 = ["pow2:-8:-1", "pow2:-4:3", "pow2:0:0", "pow2:-16:0", "pow2:-125:126", "pow2:-1:6"]
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.17549435e-38,
                         3.4028235e38, -3.4028235e38, 1e-40], np.float32)

    def patterns(n, seed):
        return np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)

    def boundaries(fmt):
        f = parse_format(fmt)
        pts = [0.0, f.step, f.smallest_positive, f.max_value, f.min_value, 2 * f.max_value, 1.0, 0.5, 2.0]
        pts += list(np.arange(-64, 65) * f.step / 2)
        pts += list(f.smallest_positive * 2.0 ** np.arange(0, 40))
        pts += list(f.smallest_positive * 2.0 ** np.arange(0, 40) * 1.5)
        pts += list(f.smallest_positive * 2.0 ** (np.arange(0, 40) + 0.5))
        v = np.array(pts, np.float64)
        v = v[np.abs(v) < 3e38].astype(np.float32)
        v = np.concatenate([v, -v])
        return np.concatenate([v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))])

    return fixed + mini + pow2, specials, boundaries, patterns


def same_bits(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


PER_CHANNEL = [
    (dfp_channel_format([0.01, 1.0, 40.0, 3e-5, 0.2, 7.0, 0.5, 1e3], 8, axis=-4), (8, 16, 3, 3)),
    (PerChannel(tuple(Pow2(-9 - i, -2 + i % 3) for i in range(8)), -4), (8, 16, 3, 3)),
    (dfp_channel_format(np.geomspace(1e-3, 10, 64), 6, axis=-2), (64, 100)),
]
STOCHASTIC = ["fixed:8:3", "minifloat:8:4", "pow2:-8:-1", "fixed:16:12", "ufixed:8:3"]


def standalone(folder: Path) -> bool:
    exe = folder / "qsim_cuda_test"
    if not exe.is_file():
        print(f"standalone: SKIPPED ({exe} not found)")
        return True
    grid, x = _grid()
    lines, wants = [], []
    for f in grid:
        lines.append(f"{f} nearest_even - - 0")
        wants.append(("ne", f, x, None))
    rng = np.random.default_rng(9)
    for fmt, shape in PER_CHANNEL:
        n = int(np.prod(shape))
        lines.append(f"{fmt.format_text()} nearest_even {fmt.axis} {','.join(map(str, shape))} 0")
        wants.append(("pc", fmt, x[:n].reshape(shape), shape))
    for f in STOCHASTIC:
        lines.append(f"{f} stochastic - 200000 1234")
        wants.append(("sr", f, x[:200_000], None))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        # The per-channel rows use the first values of the input: make those realistic weights.
        xin = x.copy()
        xin[:102400] = (rng.standard_normal(102400) * 2.0 ** rng.integers(-12, 4, 102400)).astype(np.float32)
        xin.tofile(t / "in.f32")
        (t / "specs.txt").write_text("\n".join(lines) + "\n")
        t0 = time.perf_counter()
        done = subprocess.run([str(exe), str(t / "in.f32"), str(t / "specs.txt"), str(t / "out.f32")],
                              capture_output=True, text=True, timeout=300)
        print(done.stderr.strip())
        if done.returncode != 0:
            print(f"standalone: FAILED (exit {done.returncode})")
            return False
        out = np.fromfile(t / "out.f32", np.float32)
    ok, offset, mismatches = True, 0, []
    stoch = {}
    for kind, fmt, xs, shape in wants:
        xs = xin[: xs.size].reshape(xs.shape) if kind != "ne" else xin
        n = xs.size
        got = out[offset: offset + n].reshape(xs.shape)
        offset += n
        if kind == "sr":
            stoch[fmt] = (xs, got)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = quantize(xs, fmt)
        good = same_bits(got, want)
        if not good.all():
            ok = False
            i = np.flatnonzero(~good.ravel())[:3]
            mismatches.append(f"{fmt}: {(~good).sum()} values differ, e.g. x={xs.ravel()[i]} gpu={got.ravel()[i]} "
                              f"numpy={want.ravel()[i]}")
    print(f"standalone: {len(grid)} scalar formats x {x.size} values, {len(PER_CHANNEL)} per-channel formats: "
          + ("bit-exact to numpy" if ok else "MISMATCH"))
    for m in mismatches[:10]:
        print("  " + m)
    ok = _stochastic_vs_cpu(folder, stoch) and ok
    print(f"standalone total {time.perf_counter() - t0:.1f} s")
    return ok


def _stochastic_vs_cpu(folder: Path, stoch: dict) -> bool:
    """Stochastic rounding: GPU == CPU kernel for the same seed and run (counter-based noise)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from ristretto_onnx.ops import make_quantize_node
    except ImportError as e:
        print(f"stochastic: GPU only ({e}); checking the value sets")
        ort = None
    ok = True
    for fmt, (xs, got) in stoch.items():
        if ort is None:
            continue
        node = make_quantize_node("x", "y", fmt, rounding="stochastic")
        node.attribute.append(helper.make_attribute("seed", 1234))
        g = helper.make_graph([node], "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.ristretto", 1)],
                              ir_version=10)
        so = ort.SessionOptions()
        so.register_custom_ops_library(str(folder / "libristretto_kernels_cuda.so"))
        cpu = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": xs})[0]
        same = same_bits(cpu, got).all()
        ok = ok and same
        print(f"stochastic {fmt}: GPU {'==' if same else '!='} CPU kernel (seed 1234) on {xs.size} values")
    return ok


def through_onnxruntime(folder: Path, bench_seconds: float) -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime CUDA EP: SKIPPED (onnxruntime is not installed)")
        return True
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"onnxruntime CUDA EP: SKIPPED (onnxruntime {ort.__version__} has no CUDAExecutionProvider; "
              "install onnxruntime-gpu for the in-session check and the throughput ratios)")
        return True
    from onnx import TensorProto, helper

    from ristretto_onnx.ops import make_quantize_node

    lib = folder / "libristretto_kernels_cuda.so"
    grid, x = _grid()
    nodes = [make_quantize_node("x", f"y{i}", f) for i, f in enumerate(grid)]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                          [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["N"]) for i in range(len(grid))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.ristretto", 1)],
                          ir_version=10)
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(lib))
    so.log_severity_level = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    outs = sess.run(None, {"x": x})
    bad = [f for f, y in zip(grid, outs) if not same_bits(y, quantize(x, f)).all()]
    print(f"onnxruntime {ort.__version__} CUDA EP: {len(grid)} formats, "
          + ("bit-exact to numpy" if not bad else f"MISMATCH in {bad[:5]}"))
    ok = not bad
    if os.environ.get("RISTRETTO_ZOO"):
        os.environ["RISTRETTO_KERNELS"] = str(lib)
        sys.path.insert(0, str(ROOT / "bench"))
        import bench_kernels

        rounds = 2 if bench_seconds < 120 else 3
        bench_kernels.main(["--models", "resnet20-cifar10,squeezenet1.1-imagenet", "--rounds", str(rounds),
                            "--batches", "4", "--gpu-only", "--schemes", "dfp,minifloat"])
    else:
        print("throughput: SKIPPED (set RISTRETTO_ZOO to the zoo for the ResNet-20 / SqueezeNet ratios)")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="folder with libristretto_kernels_cuda.so and qsim_cuda_test")
    ap.add_argument("--bench-seconds", type=float, default=90)
    args = ap.parse_args(argv)
    if not args.folder.is_dir():
        print(f"device_kernels: {args.folder} is not a folder", file=sys.stderr)
        return 2
    ok = standalone(args.folder)
    ok = through_onnxruntime(args.folder, args.bench_seconds) and ok
    print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
