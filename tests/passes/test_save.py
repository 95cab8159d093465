"""save_model / write_text_atomic: atomic writes, external data above the protobuf limit."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes import save as save_module
from ristretto_onnx.passes.save import save_model, write_text_atomic
from ristretto_onnx.runtime.session import create_session
from tests import builders as synth


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_small_model_is_one_file_and_no_temp_is_left(tmp_path):
    m = synth.conv_relu_conv()
    save_model(m, tmp_path / "m.onnx")
    assert _files(tmp_path) == ["m.onnx"]
    assert onnx.load(tmp_path / "m.onnx") == m


def test_external_data_does_not_touch_the_callers_proto_and_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(save_module, "EXTERNAL_MIN_BYTES", 64)
    m = synth.flatten_gemm()
    before = m.SerializeToString()
    save_model(m, tmp_path / "big.onnx", external_data=True)
    assert m.SerializeToString() == before
    assert _files(tmp_path) == ["big.onnx", "big.onnx.data"]
    light = onnx.load(tmp_path / "big.onnx", load_external_data=False)
    external = [t.name for t in light.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external  # the weights went to the data file ...
    assert all(int(e.value) % 4096 == 0 for t in light.graph.initializer for e in t.external_data
               if e.key == "offset")  # ... page-aligned
    x = synth.sample_input(m)
    np.testing.assert_array_equal(create_session(tmp_path / "big.onnx").run(None, {"x": x})[0],
                                  create_session(m).run(None, {"x": x})[0])
    loaded = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "big.onnx").graph.initializer}
    for t in m.graph.initializer:
        np.testing.assert_array_equal(loaded[t.name], numpy_helper.to_array(t))


def test_size_decides_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(save_module, "PROTO_LIMIT", 100)
    monkeypatch.setattr(save_module, "EXTERNAL_MIN_BYTES", 16)
    save_model(synth.conv_relu_conv(), tmp_path / "m.onnx")
    assert _files(tmp_path) == ["m.onnx", "m.onnx.data"]


def test_failed_write_leaves_neither_output_nor_temp(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(RistrettoError, match="No space left"):
        save_model(synth.conv_relu_conv(), tmp_path / "m.onnx")
    with pytest.raises(RistrettoError):
        write_text_atomic(tmp_path / "m.json", "{}")
    assert _files(tmp_path) == []


def test_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(RistrettoError, match="does not exist"):
        save_model(synth.conv_relu_conv(), tmp_path / "nope" / "m.onnx")


def test_write_text_atomic_replaces(tmp_path):
    write_text_atomic(tmp_path / "a.json", "1")
    write_text_atomic(tmp_path / "a.json", "2")
    assert (tmp_path / "a.json").read_text() == "2"
    assert _files(tmp_path) == ["a.json"]
