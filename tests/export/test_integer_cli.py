"""``ristretto-onnx export --to integer`` and ``--to c`` from the command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from ristretto_onnx.cli import main
from ristretto_onnx.export.integer import INTEGER_KEY
from ristretto_onnx.export.integer_check import run_batches
from tests.export import c_build, int_models
from tests.export.test_integer import _sim_with


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "sim.onnx"
    onnx.save(int_models.simulated(8, 3), path)
    return path


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ristretto_onnx", *map(str, args)], capture_output=True, text=True)


def _run(model, x):
    return next(run_batches(model, [x]))


def test_export_integer(sim_path, tmp_path):
    before = sim_path.read_bytes()
    out = tmp_path / "int.onnx"
    assert main(["export", str(sim_path), str(out), "--to", "integer"]) == 0
    integer = onnx.load(out)
    assert integer.ir_version == 10 and any(p.key == INTEGER_KEY for p in integer.metadata_props)
    x = int_models.inputs(64)
    np.testing.assert_array_equal(_run(integer, x), _run(onnx.load(sim_path), x))
    assert sim_path.read_bytes() == before
    r = _cli("export", sim_path, out, "--to", "integer")
    assert r.returncode == 2 and "--force" in r.stderr and r.stderr.count("\n") == 1


def test_export_c_builds_and_matches(sim_path, tmp_path):
    c_build.need_toolchain()
    outdir = tmp_path / "golden"
    assert main(["export", str(sim_path), str(outdir), "--to", "c"]) == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["Makefile", "main.c", "ristretto_model.c", "ristretto_model.h"]
    r = subprocess.run(["make", "-s", "-C", str(outdir)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    x = int_models.inputs(64)
    integer = onnx.load(sim_path)
    np.testing.assert_array_equal(c_build.run(outdir / "ristretto_model", x, 10), _run(integer, x))
    r = _cli("export", sim_path, outdir, "--to", "c")
    assert r.returncode == 2 and "exists; pass --force" in r.stderr
    assert main(["export", str(sim_path), str(outdir), "--to", "c", "--force"]) == 0


@pytest.mark.parametrize("to, out", [("integer", "o.onnx"), ("c", "o")])
def test_minifloat_is_a_one_line_error_and_writes_nothing(tmp_path, to, out):
    sim = tmp_path / "mf.onnx"
    onnx.save(_sim_with({"dw/outputs": "minifloat:8:4"}), sim)
    r = _cli("export", sim, tmp_path / out, "--to", to)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "tensor 'cd__float' has format minifloat:8:4" in r.stderr
    assert not (tmp_path / out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mf.onnx"]
