"""Acceptance on real networks (slow): resnet20-cifar10 and lenet-mnist at dfp 8.

The simulated models are what ``ristretto-onnx quantize zoo:NAME OUT --scheme dfp --bits 8``
writes: layer inputs, weights and outputs quantized, biases in float.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ristretto_onnx import zoo
from ristretto_onnx.export.integer import INTEGER_KEY, export_integer
from ristretto_onnx.export.integer_check import agreement, run_batches
from ristretto_onnx.quantize import QuantizeOptions, quantize
from tests.export import c_build

pytestmark = pytest.mark.slow


def _dfp8(name: str, **options):
    model = zoo.resolve_model(f"zoo:{name}")
    opts = QuantizeOptions(scheme="dfp", bits=8, **options)
    return quantize(str(model), opts, zoo.model_dataset(name, "calib")).model


def _test_set(name: str, n: int | None = None):
    xs, ys = [], []
    for x, y in zoo.model_dataset(name, "test").batches(500):
        xs.append(x)
        ys.append(y)
        if n is not None and sum(map(len, xs)) >= n:
            break
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def _outputs(model, x: np.ndarray) -> np.ndarray:
    return np.concatenate(list(run_batches(model, [x[i:i + 250] for i in range(0, len(x), 250)])))


def test_resnet20_integer_model_agrees_with_simulation(zoo_env):
    sim = _dfp8("resnet20-cifar10")
    x, y = _test_set("resnet20-cifar10", 1000)
    a = agreement(_outputs(sim, x), _outputs(export_integer(sim), x), y)
    # On all 10,000 test images: see the README (a handful of top-1 flips, accuracy within 0.1 point).
    assert a.top1_disagreements <= 2, a
    assert abs(a.top1_sim - a.top1_integer) <= 0.001 + 1e-12, a
    assert a.differing_samples <= 20, a


def test_resnet20_with_quantized_biases_is_identical(zoo_env):
    # 8-bit biases sit on the accumulator grid and every accumulator stays below 2**24 steps,
    # so float32 accumulation is exact and the simulation must equal the integer model.
    sim = _dfp8("resnet20-cifar10", quantize_bias=True)
    integer = export_integer(sim)
    summary = json.loads(next(p.value for p in integer.metadata_props if p.key == INTEGER_KEY))
    assert summary["float32_may_round"] == []
    x, _ = _test_set("resnet20-cifar10", 500)
    np.testing.assert_array_equal(_outputs(integer, x), _outputs(sim, x))


def test_lenet_c_model_identical_to_integer_model_on_mnist(zoo_env, tmp_path):
    sim = _dfp8("lenet-mnist")
    binary = c_build.build(sim, tmp_path)
    x, y = _test_set("lenet-mnist")
    assert len(x) == 10000
    integer = _outputs(export_integer(sim), x)
    np.testing.assert_array_equal(c_build.run(binary, x, 10), integer)
    assert (integer.argmax(1) == y).mean() > 0.98


def test_resnet20_c_model_identical_to_integer_model(zoo_env, tmp_path):
    sim = _dfp8("resnet20-cifar10")
    binary = c_build.build(sim, tmp_path)
    x, _ = _test_set("resnet20-cifar10", 100)
    np.testing.assert_array_equal(c_build.run(binary, x, 10), _outputs(export_integer(sim), x))
