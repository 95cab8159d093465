"""Weights that stay on disk (issue 10, Deliver 8; ``passes/external.py``).

A model with external data is not loaded into memory: its initializers stay references into the
data file through every pass, are read in chunks of rows where a pass needs their values, and
are copied in chunks into the output's own data file. These tests pin what that must not
change: the values read, the proto (never rewritten by a read), the Simulator's numbers when
weights are fed at run time, and a clean error for a data file that does not match the model.
Peak memory on a 2.5 GB model is measured by ``bench/external_data.py`` (not in CI).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ristretto_onnx.compress import compress
from ristretto_onnx.data import load_dataset
from ristretto_onnx.data.preprocess import Preprocess
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed
from ristretto_onnx.passes import external
from ristretto_onnx.passes.graph import constant_value, import_graph
from ristretto_onnx.passes.load import load_model
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.passes.save import save_model
from ristretto_onnx.runtime import lowering
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.runtime.simulator import Simulator
from ristretto_onnx.zoo.store import package_dir


@pytest.fixture()
def on_disk(tmp_path):
    """The digits CNN saved with external data: (in-memory model, path of the external copy)."""
    model = onnx.load(str(package_dir() / "digits-cnn.onnx"))
    path = tmp_path / "big.onnx"
    save_model(model, path, external_data=True)
    return model, path


def _images() -> np.ndarray:
    with np.load(package_dir() / "digits-test.npz") as d:
        return d["images"][:64, None].astype(np.float32) / np.float32(255)


def test_weights_stay_on_disk_and_read_as_in_memory(on_disk, monkeypatch):
    model, path = on_disk
    monkeypatch.setattr(external, "CHUNK_BYTES", 100)  # several chunks per weight
    loaded = load_model(path)
    by_name = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    on_file = [t for t in loaded.graph.initializer if external.is_external(t)]
    assert len(on_file) == 3 and not any(t.HasField("raw_data") for t in on_file)
    before = loaded.SerializeToString()
    graph = import_graph(loaded)
    for t in on_file:
        assert np.array_equal(external.tensor_array(t), by_name[t.name])
        rows = [external.tensor_rows(t, a, b) for a, b in external.row_chunks(t)]
        assert len(rows) > 1 and np.array_equal(np.concatenate(rows), by_name[t.name])
        assert np.array_equal(constant_value(graph.tensors()[t.name]), by_name[t.name])
    assert loaded.SerializeToString() == before  # reading never loads the data into the proto


def test_fed_weights_give_the_plain_sessions_numbers(on_disk, monkeypatch):
    """With weights on disk the Simulator feeds large weights at run time (no second copy in
    onnxruntime); quantized plans give exactly the numbers of a plain session of the simulated
    model, float weights in a convolution agree to float rounding (no NCHWc kernel for fed weights)."""
    model, path = on_disk
    monkeypatch.setattr(lowering, "FED_MIN_BYTES", 0)  # feed every weight of the small CNN
    prepared, plain = prepare(path), prepare(model)
    sim = Simulator(prepared.annotated)
    x = _images()
    plan = {g.id: Fixed(8, 5) for layer in plain.layers for g in layer.groups if g.role != "bias"}
    sim.set_formats(plan, replace=True)
    assert external.has_external(prepared.annotated)
    fed = sim.lowered().feeds
    assert sum(value.ndim >= 2 for value in fed.values()) == len(plain.layers)  # every weight is fed
    reference = create_session(simulate(plain, plan)).run(None, {"input": x})[0]
    assert np.array_equal(sim.run(x), reference)
    sim.set_formats({}, replace=True)
    float_ref = create_session(plain.float_model).run(None, {"input": x})[0]
    np.testing.assert_allclose(sim.run(x), float_ref, rtol=0, atol=1e-4)


def test_a_data_file_that_does_not_match_is_a_clean_error(on_disk):
    _, path = on_disk
    data = path.with_name(path.name + ".data")
    data.write_bytes(data.read_bytes()[:-5000])
    with pytest.raises(RistrettoError) as e:
        load_model(path)
    assert "corrupt" in str(e.value) or "truncated" in str(e.value) or "not valid ONNX" in str(e.value)
    data.unlink()
    with pytest.raises(RistrettoError):
        load_model(path)


def test_compress_test_split_on_disk_scores_as_in_memory(on_disk):
    """``compress(..., test=...)`` scores the chosen plan on the search's simulator when the
    weights are on disk (one copy of them): the same test numbers as the in-memory path."""
    pre = Preprocess.parse("scale=1/255;add_channel_axis")
    data = load_dataset(str(package_dir() / "digits-test.npz"), pre)
    calib = load_dataset(str(package_dir() / "digits-calib.npz"), pre)
    kwargs = dict(calib=calib, test=data, calib_size=64, min_bits=6, max_bits=8)
    _, path = on_disk
    plain = compress(str(package_dir() / "digits-cnn.onnx"), data, **kwargs)
    disk = compress(str(path), data, **kwargs)
    assert disk.plan == plain.plan
    got, want = disk.report, plain.report
    assert (got.test_baseline, got.test_final, got.n_test_images) == \
        (want.test_baseline, want.test_final, want.n_test_images) and want.n_test_images == len(data)


def test_a_proto_with_weights_on_disk_is_checked_without_copying_them(on_disk, monkeypatch):
    """Re-loading a pipeline proto (Simulator, trainer) checks it in memory: no weight is written."""
    from ristretto_onnx.passes import load as load_module

    _, path = on_disk
    loaded = load_model(path)
    by_path = load_module._checked_and_inferred_on_disk(onnx.ModelProto.FromString(loaded.SerializeToString()))

    def no_copy(*args, **kwargs):
        raise AssertionError("the weights were copied to check the model")

    monkeypatch.setattr(load_module._save, "save_model", no_copy)
    again = load_model(loaded)
    assert again.SerializeToString() == by_path.SerializeToString()  # same types, same references
    assert sum(external.is_external(t) for t in again.graph.initializer) == 3
    broken = onnx.ModelProto.FromString(loaded.SerializeToString())
    broken.graph.node[0].input[0] = "nowhere"
    with pytest.raises(RistrettoError, match="not valid ONNX"):
        load_model(broken)


def test_a_negative_external_offset_is_a_clean_error(on_disk):
    _, path = on_disk
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "offset":
                entry.value = "-4096"
    onnx.save(model, str(path))
    with pytest.raises(RistrettoError, match="offset must be non-negative"):
        load_model(path)
