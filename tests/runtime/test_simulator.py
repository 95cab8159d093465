"""The Simulator gives bit-identical outputs to plain sessions, across format changes."""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.runtime.simulator import Simulator
from tests.builders import LAYERS, annotate, images, residual_cnn


def plain(model, x):
    """The reference: a plain session of the model with the formats in its attributes."""
    return create_session(model, kernels=False).run(None, {"input": x})[0]  # function bodies


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


CHANGES = [
    {},
    {"conv2/inputs": "fixed:6:3", "conv2/outputs": "fixed:8:5"},
    {"conv1/outputs": None, "fc/inputs": "fixed:8:2"},
    {"conv3/weights": "fixed:4:5", "conv1/weights": None},
    {"conv2/inputs": "fixed:12:6", "conv3/outputs": "fixed:16:10"},  # wider than int8
    {"conv2/inputs": "minifloat:8:4", "fc/weights": "pow2:-8:-1"},
    {"conv1/inputs": "fixed:8:0", "conv2/inputs": "fixed:8:6"},  # coarser and finer than the output
    {name: None for name in [f"{layer}/{role}" for layer in LAYERS for role in ("inputs", "outputs")]},
]


@pytest.mark.parametrize("parametric", [True, False])
def test_bit_identical_across_format_changes(parametric):
    sim = Simulator(annotate(residual_cnn()), parametric=parametric)
    x = images()
    for change in CHANGES:
        sim.set_formats(change)
        got = sim.run(x)
        want = plain(sim.model(), x)
        assert same_bits(got, want), change


def test_output_quantizer_keeps_signed_zeros():
    # fc/outputs feeds the graph output: a coarse format makes many logits +-0.
    sim = Simulator(annotate(residual_cnn()))
    sim.set_formats({"fc/outputs": "fixed:4:0"})
    x = images(128)
    got, want = sim.run(x), plain(sim.model(), x)
    assert np.signbit(want[want == 0]).any(), "the test data must produce -0 logits"
    assert same_bits(got, want)


def test_parametric_activation_changes_reuse_the_session():
    sim = Simulator(annotate(residual_cnn()), parametric=True)
    x = images(8)
    sim.run(x)
    for bits, frac in [(8, 2), (8, 6), (6, 3), (4, 1), (2, 0), (7, 5)]:  # any width up to 8
        sim.set_formats({"conv2/inputs": f"fixed:{bits}:{frac}", "conv3/outputs": f"fixed:{bits}:{frac - 1}"})
        assert same_bits(sim.run(x), plain(sim.model(), x))
    assert sim.sessions_built == 1
    sim.set_formats({"conv2/weights": "fixed:6:5"})  # weights are baked: a new session
    sim.run(x)
    assert sim.sessions_built == 2
    sim.set_formats({"conv2/weights": "fixed:8:6"})  # back to a structure seen before: cached
    sim.run(x)
    assert sim.sessions_built == 2


def test_replace_makes_omitted_quantizers_float():
    model = annotate(residual_cnn())
    sim = Simulator(model)
    sim.set_formats({"conv1/inputs": "fixed:8:3"}, replace=True)
    assert sim.formats["conv1/inputs"] is not None
    assert all(v is None for k, v in sim.formats.items() if k != "conv1/inputs")
    x = images(16)
    assert same_bits(sim.run(x), plain(sim.model(), x))


def test_unknown_quantizer_is_a_one_line_error():
    sim = Simulator(annotate(residual_cnn()))
    with pytest.raises(RistrettoError) as e:
        sim.set_formats({"conv9/inputs": "fixed:8:4"})
    assert "\n" not in str(e.value) and "conv9/inputs" in str(e.value)
    with pytest.raises(RistrettoError):
        sim.set_formats({"conv1/inputs": "fixed:99:4"})


def test_slot_models_from_the_passes_are_addressed_by_group():
    from ristretto_onnx.passes.pipeline import prepare, simulate

    prepared = prepare(residual_cnn())
    plan = {g.id: "fixed:8:4" for g in prepared.layers.groups if g.role != "bias"}
    sim = Simulator(prepared.annotated)
    sim.set_formats(plan, replace=True)
    x = images(32)
    assert same_bits(sim.run(x), plain(simulate(prepared, plan), x))
    one = next(iter(plan))
    sim.set_formats({one: None})
    plan[one] = None
    assert same_bits(sim.run(x), plain(simulate(prepared, plan), x))


def test_slot_model_activation_changes_reuse_the_session():
    from ristretto_onnx.passes.pipeline import prepare

    prepared = prepare(residual_cnn())
    plan = {g.id: "fixed:8:4" for g in prepared.layers.groups if g.role != "bias"}
    target = [g for g in plan if g.endswith("/inputs")][1]
    sim = Simulator(prepared.annotated)
    sim.set_formats(plan, replace=True)
    x = images(8)
    sim.set_formats({target: "fixed:8:3"})  # differs from its producer's format: own quantizer
    sim.run(x)
    built = sim.sessions_built
    for fmt in ("fixed:8:2", "fixed:6:3", "fixed:4:0"):
        sim.set_formats({target: fmt})
        assert same_bits(sim.run(x), plain(sim.model(), x))
    assert sim.sessions_built == built


def test_sessions_kept_are_sized_by_the_memory_a_first_run_grows(monkeypatch):
    """A session's first run that grows the process by a third of the budget leaves room for 3."""
    from ristretto_onnx.runtime import session_memory, simulator

    total = 12 << 30
    monkeypatch.setattr(session_memory, "physical_bytes", lambda: total)
    grown = int(total * session_memory.BUDGET_SHARE) // 3
    resident = iter(range(0, 100 * grown, grown))  # +grown across every measured run
    monkeypatch.setattr(simulator, "resident_bytes", lambda: next(resident))
    sim = Simulator(annotate(residual_cnn()), max_sessions=8)
    x = images(8)
    weights = [f"{layer}/weights" for layer in LAYERS]
    keys = []
    for k, w in enumerate(weights):
        sim.set_formats({w: "fixed:6:5"})
        assert same_bits(sim.run(x), plain(sim.model(), x))
        keys.append(sim.lowered().key)
        assert len(sim._sessions) == min(k + 1, 3)
    assert sim.session_bytes == grown and sim.sessions_built == len(weights) > 3
    assert list(sim._sessions) == keys[-3:]  # the least recently used went first


def test_sessions_that_fit_keeps_at_least_one_and_at_most_the_limit():
    from ristretto_onnx.runtime.session_memory import sessions_that_fit

    assert sessions_that_fit(100 << 20, 8, total=24 << 30) == 8  # CIFAR-size: all of them
    assert sessions_that_fit(1650 << 20, 8, total=24 << 30) == 3  # SqueezeNet at 256 images
    assert sessions_that_fit(64 << 30, 8, total=24 << 30) == 1
    assert sessions_that_fit(0, 8, total=24 << 30) == 8
