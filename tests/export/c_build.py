"""Build and run a C golden model in a test (skips where no C compiler or make is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from ristretto_onnx.export.c_model import export_c


def need_toolchain() -> None:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed to build the C golden model")


def build(sim: onnx.ModelProto, outdir: Path) -> Path:
    need_toolchain()
    export_c(sim, outdir)
    r = subprocess.run(["make", "-s", "-C", str(outdir)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return outdir / "ristretto_model"


def run(binary: Path, x: np.ndarray, outputs: int) -> np.ndarray:
    src, dst = binary.parent / "in.bin", binary.parent / "out.bin"
    x.astype("<f4").tofile(src)
    r = subprocess.run([str(binary), str(src), str(dst)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return np.fromfile(dst, dtype="<f4").reshape(len(x), outputs)
