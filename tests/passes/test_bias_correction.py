"""passes.bias_correction: the corrected bias cancels the mean output error of quantized weights."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from ristretto_onnx.data import load_dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed
from ristretto_onnx.moments import input_means
from ristretto_onnx.passes.bias_correction import apply_bias_correction, weight_error_means
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.runtime.session import create_session

from tests import builders as synth


def conv_nobias_1x1():
    """x -> Conv 3x3 -> Relu -> Conv 1x1 without a bias (groups 2) -> y."""
    inits = [synth.init("w1", synth.weights((4, 3, 3, 3), 1)), synth.init("w2", synth.weights((6, 2, 1, 1), 2))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", group=2)]
    return synth.model(nodes, inits, y_shape=("N", 6, 8, 8))


def channel_means(y):
    axes = (0, 2, 3) if y.ndim == 4 else (0,)
    return y.astype(np.float64).mean(axis=axes)


@pytest.mark.parametrize("build, layer", [(synth.conv_relu_conv, "conv2"), (conv_nobias_1x1, "conv2"),
                                          (synth.flatten_gemm, "fc2"), (synth.matmul_add, "fc2")])
def test_the_last_layers_mean_output_error_is_cancelled(build, layer):
    """Only the last layer's weights quantized (coarsely): its mean output per channel, over the
    calibration images, equals FP32's after the correction (exact for 1x1 convs and fc layers)."""
    m = build()
    p = prepare(m)
    x = synth.sample_input(m, batch=64, seed=3, scale=2.0)
    plan = {f"{layer}/weights": Fixed(3, 2)}
    run = lambda model: create_session(model).run(None, {"x": x})[0]  # noqa: E731
    want = channel_means(run(p.float_model))
    before = channel_means(run(simulate(p, plan)))
    means = input_means(p.float_model, p.layers, load_dataset(x))
    deltas = weight_error_means(p.float_model, p.layers, plan, means)
    assert set(deltas) == {layer}
    np.testing.assert_allclose(before - want, deltas[layer].ravel(), atol=1e-5)
    after = channel_means(run(simulate(apply_bias_correction(p.annotated, p.layers, deltas), plan)))
    assert np.abs(before - want).max() > 1e-2
    np.testing.assert_allclose(after, want, atol=1e-5)
    # the float model gets the same correction (same tensor names)
    np.testing.assert_allclose(channel_means(run(apply_bias_correction(p.float_model, p.layers, deltas))),
                               want - deltas[layer].ravel(), atol=1e-5)


def test_quantize_option_on_off_auto():
    m = synth.conv_relu_conv()
    x = synth.sample_input(m, batch=64, seed=3, scale=2.0)
    y = create_session(m).run(None, {"x": x})[0]
    calib = load_dataset(x)
    kw = dict(scheme="dfp", weight_bits=3, act_bits=16, calib_size=64)
    off = quantize(m, QuantizeOptions(bias_correction="off", **kw), calib)
    on = quantize(m, QuantizeOptions(bias_correction="on", **kw), calib)
    auto = quantize(m, QuantizeOptions(**kw), calib)
    assert (off.bias_correction, on.bias_correction) == ("off", "applied")
    assert auto.bias_correction in ("applied", "outputs", "rejected")
    err = lambda r: np.abs(channel_means(create_session(r.model).run(None, {"x": x})[0]) - channel_means(y)).max()  # noqa: E731
    assert err(on) < err(off)
    with pytest.raises(RistrettoError):
        QuantizeOptions(bias_correction="maybe", **kw)


def test_output_channel_rule_never_clips_unless_the_output_error_drops():
    """ristretto_onnx.channel_rule: a channel with one outlier weight reading a tiny input clips
    it (finer steps for the rest); the same channel reading a large input keeps it."""
    from types import SimpleNamespace

    from ristretto_onnx.channel_rule import output_error_format
    from ristretto_onnx.range_rules import dfp_frac_bits

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (3, 64)).astype(np.float32)
    w[:, 0] = 1.5  # the largest weight of every channel reads input 0
    layer = SimpleNamespace(op_type="Gemm", out_channel_axis=0)
    f0 = dfp_frac_bits(1.5, 6)
    quiet = np.ones(64)
    quiet[0] = 1e-6
    clipped = output_error_format(layer, w, 6, quiet)
    assert all(f.frac_bits > f0 for f in clipped.formats)
    loud = np.ones(64)
    loud[0] = 1e3
    kept = output_error_format(layer, w, 6, loud)
    assert all(f.frac_bits == f0 for f in kept.formats)
    # per channel never has a larger output error than per tensor (same error measure)
    x2 = rng.uniform(0.1, 2.0, 64)
    pc = output_error_format(layer, w, 6, x2)
    for fmt_per_tensor in (Fixed(6, f0), Fixed(6, f0 + 1), Fixed(6, f0 + 2)):
        err_pc = (np.square(pc.quantize(w).astype(np.float64) - w) * x2).sum()
        err_pt = (np.square(fmt_per_tensor.quantize(w).astype(np.float64) - w) * x2).sum()
        assert err_pc <= err_pt * 1.06


def test_quantize_uses_the_output_rule_for_per_channel_weights():
    m = synth.conv_relu_conv()
    x = synth.sample_input(m, batch=64, seed=3, scale=2.0)
    kw = dict(scheme="dfp", bits=6, calib_size=64, weight_granularity="channel", range_rule="mse",
              bias_correction="off")
    out = quantize(m, QuantizeOptions(**kw), load_dataset(x))
    rng = quantize(m, QuantizeOptions(channel_rule="range", **kw), load_dataset(x))
    from ristretto_onnx.formats import PerChannel
    from ristretto_onnx.range_rules import dfp_frac_bits
    w1 = synth.weights((4, 3, 3, 3), 1)
    fmt = out.plan["conv1/weights"]
    assert isinstance(fmt, PerChannel) and isinstance(rng.plan["conv1/weights"], PerChannel)
    # never coarser than eq. 5.2 on the channel's largest weight
    assert all(f.frac_bits >= dfp_frac_bits(float(np.abs(c).max()), 6) for f, c in zip(fmt.formats, w1))
    with pytest.raises(RistrettoError):
        QuantizeOptions(channel_rule="best", **kw)


def test_quantize_command_flags(tmp_path):
    """The CLI passes the accuracy options through and records the bias-correction decision."""
    import json

    from ristretto_onnx.cli import main

    m = synth.conv_relu_conv()
    import onnx
    onnx.save(m, tmp_path / "in.onnx")
    np.save(tmp_path / "calib.npy", synth.sample_input(m, batch=32, seed=3, scale=2.0))
    args = ["quantize", str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), "--scheme", "dfp", "--bits", "6",
            "--calib", str(tmp_path / "calib.npy"), "--bias-correction", "on", "--signed-activations",
            "--channel-rule", "range", "--equalize", "--round-twice"]
    assert main(args) == 0
    side = json.loads((tmp_path / "out.json").read_text())
    assert side["bias_correction"] == "applied"
    assert not any(str(f).startswith("ufixed") for f in side["formats"].values() if f)
    assert side["options"]["equalize"] is True and side["options"]["channel_rule"] == "range"
    assert main(args[:-5] + ["--bias-correction", "maybe", "--force"]) == 2


@pytest.mark.parametrize("build", [synth.conv_relu_conv, synth.flatten_gemm, synth.matmul_add])
def test_weights_on_disk_give_the_in_memory_corrections(build, tmp_path, monkeypatch):
    """A weight left on disk (passes.external) is read a few rows at a time: same deltas."""
    from ristretto_onnx.passes import external
    from ristretto_onnx.passes.load import load_model
    from ristretto_onnx.passes.save import save_model

    monkeypatch.setattr(external, "CHUNK_BYTES", 64)  # several chunks per weight
    monkeypatch.setattr("ristretto_onnx.passes.save.EXTERNAL_MIN_BYTES", 0)
    m = build()
    save_model(m, tmp_path / "m.onnx", external_data=True)
    disk = prepare(load_model(tmp_path / "m.onnx"))
    assert any(external.is_external(t) for t in disk.float_model.graph.initializer)
    memory = prepare(m)
    plan = {g.id: Fixed(4, 2) for layer in memory.layers for g in layer.groups if g.role == "weights"}
    rng = np.random.default_rng(0)
    means = {l.name: rng.random(_inputs(l)) for l in memory.layers}
    want = weight_error_means(memory.float_model, memory.layers, plan, means)
    got = weight_error_means(disk.float_model, disk.layers, plan, means)
    assert want and want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12)


def _inputs(layer) -> int:
    """Input channels of a layer's weight (Conv: axis 1; Gemm/MatMul: the axis not the output's)."""
    if layer.op_type == "Conv":
        return layer.weight_shape[1]
    return layer.weight_shape[1 - layer.out_channel_axis]
