"""--to c: the C99 golden model computes the integer model's numbers exactly."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.export.c_model import export_c
from ristretto_onnx.export.integer import export_integer
from ristretto_onnx.export.integer_check import run_batches
from tests.export import c_build, int_models
from tests.export.test_integer import chain_model, tie_inputs


def _onnx(model, x):
    return next(run_batches(model, [x]))


@pytest.mark.parametrize("bits,avg,granularity", [(8, 3, "tensor"), (10, 3, "channel"), (12, 2, "tensor")])
def test_c_model_equals_integer_model(tmp_path, bits, avg, granularity):
    sim = int_models.simulated(bits, avg, weight_granularity=granularity)
    binary = c_build.build(sim, tmp_path)
    x = int_models.inputs(200, seed=5)
    np.testing.assert_array_equal(c_build.run(binary, x, 10), _onnx(export_integer(sim), x))


def test_c_requantization_on_ties_and_saturation(tmp_path):
    sim = chain_model("fixed:16:8", "fixed:10:4", "fixed:4:1")
    binary = c_build.build(sim, tmp_path)
    x = tie_inputs()
    np.testing.assert_array_equal(c_build.run(binary, x, 1), _onnx(sim, x))


def test_golden_model_files(tmp_path):
    c_build.need_toolchain()
    export_c(int_models.simulated(8, 3), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "main.c", "ristretto_model.c", "ristretto_model.h"]
    header = (tmp_path / "ristretto_model.h").read_text()
    assert header.count("static const int8_t") == 5  # every layer's weights
    assert "#define RM_INPUT_SIZE 768" in header and "#define RM_OUTPUT_SIZE 10" in header
    assert "right shifts" in header
    code = (tmp_path / "ristretto_model.c").read_text()
    assert "malloc" not in code and "calloc" not in code
    assert "-std=c99 -O2 -Wall -Wextra -Werror" in (tmp_path / "Makefile").read_text()


def test_golden_model_rejects_bad_input_files(tmp_path):
    binary = c_build.build(chain_model("fixed:8:4"), tmp_path)
    (tmp_path / "bad.bin").write_bytes(b"\0\0\0")  # not a whole float
    r = subprocess.run([str(binary), str(tmp_path / "bad.bin"), str(tmp_path / "o.bin")], capture_output=True, text=True)
    assert r.returncode == 1 and "not a whole number" in r.stderr and not (tmp_path / "o.bin").exists()
    r = subprocess.run([str(binary)], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    (tmp_path / "empty.bin").write_bytes(b"")
    r = subprocess.run([str(binary), str(tmp_path / "empty.bin"), str(tmp_path / "o.bin")], capture_output=True)
    assert r.returncode == 0 and (tmp_path / "o.bin").read_bytes() == b""


def test_float_tail_is_refused(tmp_path):
    import onnx
    from onnx import helper

    sim = int_models.simulated(8, 3)
    sim.graph.node.extend([
        helper.make_node("Constant", [], ["shape"], value=onnx.numpy_helper.from_array(np.array([-1, 2, 5]))),
        helper.make_node("Softmax", ["y"], ["p"], name="softmax", axis=1),
        helper.make_node("Reshape", ["p", "shape"], ["p3"], name="reshape3d"),
        helper.make_node("Identity", ["p3"], ["probs"], name="out"),
    ])
    sim.graph.output[0].name = "probs"
    with pytest.raises(RistrettoError, match=r"node 'softmax' stays in float"):
        export_c(sim, tmp_path)
    integer = export_integer(sim)  # the ONNX integer model keeps a float tail
    assert [n.op_type for n in integer.graph.node[-3:]] == ["Softmax", "Reshape", "Identity"]
    x = int_models.inputs(16)
    np.testing.assert_array_equal(_onnx(integer, x), _onnx(sim, x))
    assert _onnx(integer, x).shape == (16, 2, 5)


@pytest.mark.parametrize("global_pool", [False, True])
@pytest.mark.parametrize("bits", [8, 12])
def test_padded_and_global_max_pools_matmul_add_gemm(tmp_path, global_pool, bits):
    sim = int_models.simulated_pools(global_pool, bits)
    integer = export_integer(sim)
    x = int_models.inputs(100, seed=9)
    np.testing.assert_array_equal(_onnx(integer, x), _onnx(sim, x))
    np.testing.assert_array_equal(c_build.run(c_build.build(sim, tmp_path), x, 5), _onnx(integer, x))
