"""load_model: validation, shape inference, opset conversion, external data, large models."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.ops import default_opset
from ristretto_onnx.passes import save as save_module
from ristretto_onnx.passes.load import load_model
from ristretto_onnx.runtime.session import create_session
from tests import builders as synth


def _run(m, x):
    return create_session(m).run(None, {"x": x})[0]


def test_loads_a_path_and_infers_shapes(tmp_path):
    m = synth.conv_relu_conv()
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = load_model(path)
    shapes = {vi.name for vi in out.graph.value_info}
    assert {"c1", "r1"} <= shapes
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_proto_input_is_not_modified():
    m = synth.residual_block()
    before = m.SerializeToString()
    out = load_model(m)
    assert m.SerializeToString() == before
    assert out is not m


@pytest.mark.parametrize("opset", [11, 12])
def test_old_opsets_are_upgraded_to_13_with_equal_outputs(opset):
    m = synth.conv_relu_conv(opset=opset)
    out = load_model(m)
    assert default_opset(out) == 13
    x = synth.sample_input(m)
    np.testing.assert_array_equal(_run(out, x), _run(m, x))


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_supported_opsets_are_kept(opset):
    assert default_opset(load_model(synth.conv_relu_conv(opset=opset))) == opset


@pytest.mark.parametrize("opset", [10, 22])
def test_unsupported_opsets_are_one_line_errors(opset):
    m = synth.conv_relu_conv(opset=17)
    m.opset_import[0].version = opset
    with pytest.raises(RistrettoError, match=f"opset {opset}; supported are opsets 11 to 21"):
        load_model(m)


def test_invalid_model_and_missing_file_are_one_line_errors(tmp_path):
    m = synth.conv_relu_conv()
    m.graph.node[1].input[0] = "does_not_exist"
    with pytest.raises(RistrettoError, match="not valid ONNX") as e:
        load_model(m)
    assert "\n" not in str(e.value)
    with pytest.raises(RistrettoError, match="model file not found"):
        load_model(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(RistrettoError, match="cannot read ONNX model"):
        load_model(bad)


def test_external_data_is_loaded(tmp_path):
    m = synth.flatten_gemm()
    path = tmp_path / "ext.onnx"
    onnx.save(m, path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").is_file()
    out = load_model(path)
    x = synth.sample_input(synth.flatten_gemm())
    np.testing.assert_array_equal(_run(out, x), _run(synth.flatten_gemm(), x))


def test_models_over_the_protobuf_limit_are_checked_and_inferred_on_disk(monkeypatch):
    m = synth.residual_block()
    monkeypatch.setattr(save_module, "PROTO_LIMIT", 1000)  # pretend the model is over 2 GB
    monkeypatch.setattr(save_module, "EXTERNAL_MIN_BYTES", 16)
    out = load_model(m)
    assert {"c1", "b1"} <= {vi.name for vi in out.graph.value_info}
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in out.graph.initializer)
    x = synth.sample_input(m)
    np.testing.assert_array_equal(_run(out, x), _run(m, x))


def test_no_default_domain_is_an_error():
    m = synth.conv_relu_conv()
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(RistrettoError, match="default ONNX domain"):
        load_model(m)
