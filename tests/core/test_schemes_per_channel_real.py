"""Per-channel weights, range rules and Concat ties on the real zoo models (slow).

SqueezeNet 1.1 is scored on the zoo's 1,000 ImageNet sample images, which are also its
calibration set (the zoo has no other ImageNet data); ResNet-20 on the 10,000 CIFAR-10 test
images, calibrated on 500 train images.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ristretto_onnx.compress import CompressOptions, build_context
from ristretto_onnx.formats import PerChannel, quantize as q_ref
from ristretto_onnx.passes.analysis.concat_ties import concat_ties
from ristretto_onnx.passes.graph import constant_lookup
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.schemes import DynamicFixedPoint, plan_for
from ristretto_onnx.stats import CATEGORIES, GroupRange
from ristretto_onnx.runtime.session import create_session

pytestmark = pytest.mark.slow


def test_squeezenet_fire_modules_tie_their_expand_outputs(zoo_env):
    from ristretto_onnx import zoo

    p = prepare(zoo.resolve_model("zoo:squeezenet1.1-imagenet"))
    ties = set(concat_ties(p.float_model, p.layers).values())
    assert len(ties) == 8  # fire2 .. fire9
    for tie in ties:
        assert len(tie) == 2 and all(g.endswith("/outputs") for g in tie)
        kernels = sorted(p.layers[g.rsplit("/", 1)[0]].weight_shape[2:] for g in tie)
        assert kernels == [(1, 1), (3, 3)]  # the 1x1 and the 3x3 expand of one fire module


def test_squeezenet_dfp8_loses_at_most_half_a_point(zoo_env):
    from ristretto_onnx import zoo

    test = zoo.model_dataset("squeezenet1.1-imagenet", "test")
    # all 1,000 images; weight granularity fixed (the plan below is per channel): no per-layer
    # evidence pass, which only compress's --weight-granularity auto reads
    ctx = build_context(str(zoo.resolve_model("zoo:squeezenet1.1-imagenet")), test, calib=test,
                        options=CompressOptions(batch_size=50, calib_size=len(test), weight_granularity="channel"))
    by_group = {r.group: r for r in ctx.ranges}
    for tie in set(concat_ties(ctx.prepared.float_model, ctx.layers).values()):
        assert len({by_group[g].max_abs for g in tie}) == 1
    plan = plan_for(DynamicFixedPoint(per_channel=True, range_rule="percentile:99.99"), ctx.ranges,
                    {c: 8 for c in CATEGORIES})
    assert ctx.scorer.baseline - ctx.scorer.score(plan).value <= 0.005


def test_resnet20_conv_with_per_channel_weights_is_exact(zoo_env):
    """The simulated conv with per-channel weights equals onnxruntime's conv of numpy-quantized
    weights bit for bit, and a float64 numpy conv to rounding."""
    from ristretto_onnx import zoo

    p = prepare(zoo.resolve_model("zoo:resnet20-cifar10"))
    layer = next(l for l in p.layers if l.kind == "conv" and l.weight_shape[0] == 32)
    constant = constant_lookup(p.float_model)
    w = constant(layer.weight)
    maxes = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    group = GroupRange("g", "weights", "conv", float(maxes.max()), tuple(float(m) for m in maxes), 0)
    fmt = DynamicFixedPoint(per_channel=True, range_rule="max").formats([group], 6)["g"]
    assert isinstance(fmt, PerChannel) and len({f.frac_bits for f in fmt.formats}) > 1
    x = zoo.model_dataset("resnet20-cifar10", "test").take(16)
    x = next(iter(x.batches(16)))[0]

    def probe(model):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        m.graph.output.extend([helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                               for t in (layer.input, layer.output)])
        return create_session(m).run([layer.input, layer.output], {"input": x})

    xin, sim = probe(simulate(p, {f"{layer.name}/weights": fmt}))
    ref_model = onnx.ModelProto()
    ref_model.CopyFrom(p.float_model)
    for t in ref_model.graph.initializer:
        if t.name == layer.weight:
            t.CopyFrom(onnx.numpy_helper.from_array(q_ref(w, fmt), t.name))
    _, ref = probe(ref_model)
    assert np.array_equal(sim, ref)
    wq = q_ref(w, fmt).astype(np.float64)
    b = constant(layer.bias).astype(np.float64)
    attrs = {a.name: helper.get_attribute_value(a) for a in
             next(n for n in p.float_model.graph.node if n.output[0] == layer.node_output).attribute}
    s, pad = attrs.get("strides", [1, 1])[0], attrs.get("pads", [0] * 4)[0]
    xp = np.pad(xin.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    ho = (xin.shape[2] + 2 * pad - k) // s + 1
    cols = np.stack([xp[:, :, i:i + s * ho:s, j:j + s * ho:s] for i in range(k) for j in range(k)], axis=2)
    numpy_conv = np.einsum("ncqhw,ocq->nohw", cols, wq.reshape(w.shape[0], w.shape[1], k * k)) + b[:, None, None]
    np.testing.assert_allclose(sim, numpy_conv, rtol=1e-4, atol=1e-5 * np.abs(numpy_conv).max())
