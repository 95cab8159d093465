"""The embedded default model: committed artifacts, accuracy, exact export, deterministic rebuild."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ristretto_onnx import zoo
from ristretto_onnx.data import load_dataset
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.zoo import digits
from ristretto_onnx.zoo.store import package_dir


def _ort_top1(path) -> tuple[float, np.ndarray]:
    session = create_session(path)
    x, y = next(zoo.model_dataset("digits-cnn").batches(1000))
    logits = session.run(None, {"input": x})[0]
    return float((logits.argmax(axis=1) == y).mean()), logits


def test_default_model_needs_no_shared_zoo(empty_zoo_env):
    entry = zoo.default_model()
    assert entry.name == "digits-cnn" and entry.file.embedded
    assert zoo.resolve_model("zoo:digits-cnn") == package_dir() / "digits-cnn.onnx"
    test, calib = zoo.model_dataset("digits-cnn"), zoo.model_dataset("digits-cnn", "calib")
    assert (len(test), len(calib)) == (500, 1297)
    x, y = next(test.batches(500))
    assert x.shape == (500, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() < x.max() <= 1
    assert sorted(np.unique(y)) == list(range(10))


def test_committed_model_is_small_ir8_opset17_with_dynamic_batch():
    path = package_dir() / digits.MODEL_FILE
    assert path.stat().st_size < 200_000
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 1, 8, 8]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 10]
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "MaxPool", "Conv", "Relu",
                                                     "Flatten", "Gemm", "Relu", "Gemm"]


def test_committed_data_is_uint8_0_255_with_int64_labels():
    for name, count in (("digits-test", 500), ("digits-calib", 1297)):
        ds = load_dataset(package_dir() / f"{name}.npz")
        assert ds.images.dtype == np.uint8 and ds.images.shape == (count, 8, 8)
        assert ds.images.max() == 255 and ds.labels.dtype == np.int64 and len(ds) == count


def test_onnxruntime_accuracy_equals_recorded_and_numpy():
    path = package_dir() / digits.MODEL_FILE
    top1, logits = _ort_top1(path)
    assert top1 == zoo.default_model().fp32_top1_measured >= 0.95
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert float(props["ristretto.test_top1"]) == top1
    params = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64)
              for t in onnx.load(path).graph.initializer}
    x, y = next(zoo.model_dataset("digits-cnn").batches(1000))
    reference = digits.forward(params, x)[0]
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(axis=1), reference.argmax(axis=1))


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    params = digits.init_params(rng)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    x, y = rng.random((3, 1, 8, 8)), np.array([1, 5, 9])

    def loss(p):
        z = digits.forward(p, x)[0]
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(3), y]))

    logits, cache = digits.forward(params, x)
    grads = digits.backward(params, cache, digits._softmax_xent_grad(logits, y))
    for name, value in params.items():
        for flat in rng.choice(value.size, 3, replace=False):
            index = np.unravel_index(flat, value.shape)
            shifted = {k: v.copy() for k, v in params.items()}
            shifted[name][index] += 1e-6
            up = loss(shifted)
            shifted[name][index] -= 2e-6
            numeric = (up - loss(shifted)) / 2e-6
            assert grads[name][index] == pytest.approx(numeric, rel=1e-4, abs=1e-8), name


@pytest.mark.slow
def test_rebuild_is_deterministic_and_reproduces_the_committed_files(tmp_path):
    result = digits.build(tmp_path)
    assert result.numpy_top1 == result.onnxruntime_top1 == zoo.default_model().fp32_top1_measured
    for name in (digits.MODEL_FILE, digits.CALIB_FILE, digits.TEST_FILE):
        assert (tmp_path / name).read_bytes() == (package_dir() / name).read_bytes(), (
            f"{name}: the rebuild differs from the committed file; if the recipe changed on "
            "purpose, run python -m ristretto_onnx.zoo.digits and update digits-cnn's accuracy")
