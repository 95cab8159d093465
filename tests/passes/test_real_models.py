"""The pass pipeline and ``quantize`` on the real zoo models (../shared/zoo or $RISTRETTO_ZOO).

Acceptance figures: BN folding within 1e-5, 32-bit fixed point within 1e-5 of FP32, 16-bit
dynamic fixed point within 0.1 point of FP32 top-1 and ResNet-20 at 8 bits within 1 point, on the
full 10,000-image test sets, calibrated on the train files.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest

from ristretto_onnx.cli import main
from ristretto_onnx.data import Preprocess, load_dataset
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.runtime.session import create_session

pytestmark = pytest.mark.slow

CIFAR = Preprocess(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
MNIST = Preprocess(scale=1 / 255, add_channel_axis=True)
MODELS = {  # name: (dataset folder, preprocessing, conv layers, fc layers)
    "lenet-mnist": ("mnist", MNIST, 2, 2),
    "resnet20-cifar10": ("cifar10", CIFAR, 19, 1),
    "resnet32-cifar10": ("cifar10", CIFAR, 31, 1),
    "resnet44-cifar10": ("cifar10", CIFAR, 43, 1),
}


def _paths(zoo, name):
    folder, pre, *_ = MODELS[name]
    model = zoo / "models" / f"{name}.onnx"
    test = load_dataset(zoo / "datasets" / folder / "test.npz", pre)
    train = load_dataset(zoo / "datasets" / folder / "train.npz", pre)
    return model, test, train


def _outputs(model, data, batch=500):
    session = create_session(model)
    return np.concatenate([session.run(None, {"input": x})[0] for x, _ in data.batches(batch)])


def _top1(model, data):
    return 100.0 * float(np.mean(_outputs(model, data).argmax(1) == data.labels))


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


_FP32: dict[str, float] = {}


def _fp32_top1(zoo, name):
    if name not in _FP32:
        model, test, _ = _paths(zoo, name)
        _FP32[name] = _top1(model, test)
    return _FP32[name]


@pytest.mark.parametrize("name", list(MODELS))
def test_layers_are_found_and_bn_folding_keeps_the_outputs(shared_zoo, name):
    model, test, _ = _paths(shared_zoo, name)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    prepared = prepare(model)
    kinds = [l.kind for l in prepared.layers]
    assert (kinds.count("conv"), kinds.count("fc")) == MODELS[name][2:]
    assert not prepared.layers.skipped
    assert not any(n.op_type == "BatchNormalization" for n in prepared.float_model.graph.node)
    sample = test.take(500)
    assert _rel(_outputs(prepared.float_model, sample), _outputs(model, sample)) < 1e-5
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("name", list(MODELS))
def test_fixed_32_bits_equals_fp32_within_1e5(shared_zoo, name):
    model, test, train = _paths(shared_zoo, name)
    result = quantize(model, QuantizeOptions(scheme="fixed", bits=32), train)
    onnx.checker.check_model(result.model)
    sample = test.take(1000)
    assert _rel(_outputs(result.model, sample), _outputs(model, sample)) < 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_dfp16_top1_within_0_1_point_of_fp32(shared_zoo, name):
    model, test, train = _paths(shared_zoo, name)
    result = quantize(model, QuantizeOptions(scheme="dfp", bits=16), train)
    assert abs(_top1(result.model, test) - _fp32_top1(shared_zoo, name)) <= 0.1


def test_dfp8_resnet20_within_1_point_of_fp32(shared_zoo):
    model, test, train = _paths(shared_zoo, "resnet20-cifar10")
    result = quantize(model, QuantizeOptions(scheme="dfp", bits=8), train)
    assert _fp32_top1(shared_zoo, "resnet20-cifar10") - _top1(result.model, test) <= 1.0


def test_cli_on_a_zoo_model_and_squeezenet_dfp8(shared_zoo, zoo_env, tmp_path):
    model = shared_zoo / "models" / "squeezenet1.1-imagenet.onnx"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    out = tmp_path / "sq.onnx"
    assert main(["quantize", "zoo:squeezenet1.1-imagenet", str(out), "--scheme", "dfp", "--bits", "8",
                 "--calib-size", "48", "--batch-size", "16"]) == 0
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    onnx.checker.check_model(onnx.load(out))
    side = json.loads(out.with_suffix(".json").read_text())
    assert sum(f is not None for f in side["formats"].values()) == 26 * 3
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    assert np.isfinite(create_session(out).run(None, {"input": x})[0]).all()
