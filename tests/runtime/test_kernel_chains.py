"""The kernel library's unsigned fixed point and its fused chains (runtime/kernel_chains.py):
bit-exact to the numpy reference and to the nodes they replace, used by project sessions."""

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ristretto_onnx.formats import quantize
from ristretto_onnx.ops import make_quantize_node
from ristretto_onnx.runtime import kernels
from ristretto_onnx.runtime.kernel_chains import CHAIN_OP, drop_repeated_quantizers, fuse_chains
from ristretto_onnx.runtime.session import create_session

from tests.builders import annotate, images, residual_cnn, same_bits
from ..core.test_ops import SPECIALS, boundary_values, random_bit_patterns
from .test_kernels import _check, _kernel_outputs, _kernel_session, _model, library  # noqa: F401 (fixture)

UFIXED = [f"ufixed:{b}:{f}" for b in (1, 2, 3, 4, 7, 8, 9, 12, 16) for f in sorted({-3, 0, 1, b // 2, b - 1, b, b + 3})]
UFIXED += ["ufixed:24:12", "ufixed:25:24", "ufixed:31:0", "ufixed:31:96", "ufixed:8:126", "ufixed:8:-119"]


def _x(seed: int, fmts) -> np.ndarray:
    return np.concatenate([random_bit_patterns(40_000, seed), SPECIALS] + [boundary_values(f) for f in fmts])


def test_ufixed_kernel_is_bit_exact_without_function_bodies(library):
    """Every float32 class (subnormals, inf, NaN, -0 -> +0, negatives -> +0) on 69 formats."""
    x = _x(5, UFIXED)
    for fmt, y in zip(UFIXED, _kernel_outputs(library, UFIXED, x)):
        _check(fmt, y, x)
        assert not np.signbit(y[~np.isnan(y)]).any(), fmt


def test_ufixed_stochastic_rounding_is_unbiased_and_seeded(library):
    x = np.concatenate([np.full(100_000, 0.3, np.float32), np.full(1000, -0.01, np.float32)])
    node = make_quantize_node("x", "y", "ufixed:8:3", rounding="stochastic")
    node.attribute.append(helper.make_attribute("seed", 3))
    m = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])], functions=False)
    y = _kernel_session(m, library).run(None, {"x": x})[0]
    assert set(np.unique(y[:100_000])) == {0.25, 0.375} and abs(y[:100_000].mean() - 0.3) < 2e-3
    assert (y[100_000:] == 0).all() and not np.signbit(y[100_000:]).any()  # negatives: +0
    assert np.array_equal(_kernel_session(m, library).run(None, {"x": x})[0], y)  # same seed, same draw


def _reference(steps, x, r):
    """The nodes a chain replaces, one after the other: numpy reference quantizers, onnxruntime's
    Relu (x < 0 gives +0; -0 and NaN pass) and a float32 Add."""
    v = x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for s in steps:
            if s == "tee":
                continue
            if s == "relu":
                v = np.where(v < 0, np.float32(0), v).astype(np.float32)
            elif s == "add":
                v = (v + r).astype(np.float32)
            else:
                v = quantize(v, s)
    return v


@pytest.mark.parametrize("steps", [
    ["fixed:8:5", "relu", "ufixed:8:4"],
    ["fixed:8:3", "add", "relu", "fixed:8:6"],
    ["minifloat:8:4", "relu", "minifloat:8:3"],
    ["ufixed:8:2", "add", "pow2:-8:-1", "relu"],
    ["fixed:4:0", "fixed:8:6", "add", "minifloat:6:3", "ufixed:3:1", "relu"],
    ["minifloat:31:7", "relu"],
])
def test_chain_kernel_equals_its_nodes_one_after_the_other(library, steps):
    x = _x(7, [s for s in steps if ":" in s])
    r = np.random.default_rng(8).permutation(x) if "add" in steps else None
    inputs = ["x", "r"] if r is not None else ["x"]
    node = helper.make_node(CHAIN_OP, inputs, ["y"], domain="ai.ristretto", steps="|".join(steps))
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"]) for n in inputs]
    m = _model([node], vi, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])], functions=False)
    feeds = {"x": x} | ({"r": r} if r is not None else {})
    got = _kernel_session(m, library).run(None, feeds)[0]
    want = _reference(steps, x, r)
    ok = same_bits(got, want)
    assert ok.all(), f"{steps}: differs at x={x[~ok][:4]!r}: {got[~ok][:4]!r} vs {want[~ok][:4]!r}"


def test_chain_tee_writes_the_value_before_the_remaining_steps(library):
    steps = ["fixed:8:3", "add", "relu", "tee", "ufixed:8:5"]
    x = _x(9, ["fixed:8:3", "ufixed:8:5"])
    r = np.random.default_rng(10).permutation(x)
    node = helper.make_node(CHAIN_OP, ["x", "r"], ["y", "t"], domain="ai.ristretto", steps="|".join(steps))
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"]) for n in ("x", "r")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"]) for n in ("y", "t")]
    y, t = _kernel_session(_model([node], vi, outs, functions=False), library).run(None, {"x": x, "r": r})
    assert same_bits(t, _reference(steps[:3], x, r)).all()
    assert same_bits(y, _reference(steps[:3] + steps[4:], x, r)).all()


def test_chain_add_of_another_shape_is_an_error(library):
    node = helper.make_node(CHAIN_OP, ["x", "r"], ["y"], domain="ai.ristretto", steps="fixed:8:4|add")
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"]) for n in ("x", "r")]
    m = _model([node], vi, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])], functions=False)
    with pytest.raises(Exception, match="second input"):
        _kernel_session(m, library).run(None, {"x": np.ones(8, np.float32), "r": np.ones(4, np.float32)})
    bad = helper.make_node(CHAIN_OP, ["x"], ["y"], domain="ai.ristretto", steps="fixed:8:4|tanh")
    with pytest.raises(Exception, match="cannot parse format"):
        _kernel_session(_model([bad], vi[:1], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
                               functions=False), library)


@pytest.mark.parametrize("fmt", ["fixed:8:4", "ufixed:8:4", "minifloat:8:4"])
def test_project_sessions_fuse_quantizer_relu_add_runs_with_the_bits_of_the_bodies(library, fmt):
    """residual_cnn: conv -> q -> relu -> q -> conv ... q -> add -> relu -> q; the project session
    fuses those runs into chains (an intermediate with a second reader ends a chain) and gives
    the bits of the function bodies, on inputs with exact zeros and tiny negatives."""
    model = annotate(residual_cnn(), fmt=fmt)
    x = images(24)
    so = __import__("ristretto_onnx.runtime.session", fromlist=["session_options"]).session_options()
    source, used = kernels.prepare(model.SerializeToString(), so, ["CPUExecutionProvider"])
    chains = [n for n in onnx.load_from_string(source).graph.node if n.op_type == CHAIN_OP]
    steps = sorted(helper.get_attribute_value(n.attribute[0]).decode() for n in chains)
    assert used and len(chains) >= 2 and any("|add|" in s for s in steps) and any("|relu|" in s for s in steps), steps
    assert any("|relu|tee|" in s for s in steps), steps  # the ReLU output the residual Add reads too
    bodies = create_session(model, kernels=False).run(None, {"input": x})[0]
    assert same_bits(create_session(model).run(None, {"input": x})[0], bodies).all()
    assert bodies.std() > 0


def test_fuse_chains_leaves_graph_outputs_and_shared_tensors_alone():
    q1 = make_quantize_node("x", "a", "fixed:8:4", name="q1")
    relu = helper.make_node("Relu", ["a"], ["b"])
    q2 = make_quantize_node("b", "c", "fixed:8:4", name="q2")
    vi = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("c", "a")]
    m = _model([q1, relu, q2], vi, outs)
    fused = fuse_chains(m)  # "a" is a graph output: only relu -> q2 cannot start a chain either
    assert fused is None
    m2 = _model([q1, relu, q2], vi, outs[:1])
    fused = fuse_chains(m2)
    assert [n.op_type for n in fused.graph.node] == [CHAIN_OP]
    # the second quantizer repeats the first one's format after a ReLU: dropped (exact)
    assert helper.get_attribute_value(fused.graph.node[0].attribute[0]) == b"fixed:8:4|relu"


def test_identity_nodes_join_a_chain_without_a_step():
    """A skipped ReLU or a shared slot (set_formats writes both as Identity) does not end a run."""
    q1 = make_quantize_node("x", "a", "fixed:8:4", name="q1")
    same = helper.make_node("Identity", ["a"], ["b"], name="slot")
    add = helper.make_node("Add", ["b", "r"], ["c"])
    relu = helper.make_node("Relu", ["c"], ["d"])
    q2 = make_quantize_node("d", "y", "ufixed:8:3", name="q2")
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("x", "r")]
    m = _model([q1, same, add, relu, q2], vi, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    m.graph.value_info.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in "abcd")
    fused = fuse_chains(m)
    assert [n.op_type for n in fused.graph.node] == [CHAIN_OP]
    assert helper.get_attribute_value(fused.graph.node[0].attribute[0]) == b"fixed:8:4|add|relu|ufixed:8:3"
    lone = fuse_chains(_model([q1, same], vi[:1], [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])]))
    assert lone is None  # one step: nothing to fuse


def test_drop_repeated_quantizers_keeps_tees_last_and_formats_after_an_add():
    assert drop_repeated_quantizers(["ufixed:8:6", "relu", "ufixed:8:6"]) == ["ufixed:8:6", "relu"]
    assert drop_repeated_quantizers(["fixed:8:5", "fixed:8:5", "relu", "relu", "fixed:8:5", "fixed:8:4"]) \
        == ["fixed:8:5", "relu", "relu", "fixed:8:4"]
    keep = [["ufixed:8:5", "relu", "tee", "ufixed:8:5"],  # would end with the tee
            ["fixed:8:5", "add", "relu", "fixed:8:5"],  # a sum is not on the grid
            ["fixed:8:5", "relu", "fixed:8:4", "relu", "fixed:8:5"]]
    for steps in keep:
        assert drop_repeated_quantizers(steps) == steps


@pytest.mark.parametrize("fmt", ["fixed:8:4", "fixed:4:-2", "ufixed:8:5", "ufixed:1:0", "minifloat:8:3",
                                 "minifloat:8:4", "minifloat:5:4", "minifloat:16:5", "pow2:-8:-1", "pow2:-3:3"])
def test_a_repeated_quantizer_after_relu_is_the_identity(library, fmt):
    """What drop_repeated_quantizers relies on: q(relu(q(x))) == relu(q(x)) bit for bit (numpy
    reference), and the chain kernel with and without the repeated step agree."""
    x = _x(12, [fmt])
    once = _reference([fmt, "relu"], x, None)
    assert same_bits(_reference([fmt, "relu", fmt], x, None), once).all()
    assert same_bits(_reference([fmt, fmt], x, None), _reference([fmt], x, None)).all()
    vi = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])]
    for steps in ([fmt, "relu"], [fmt, "relu", fmt], [fmt]):
        node = helper.make_node(CHAIN_OP, ["x"], ["y"], domain="ai.ristretto", steps="|".join(steps))
        got = _kernel_session(_model([node], vi, out, functions=False), library).run(None, {"x": x})[0]
        assert same_bits(got, _reference(steps, x, None)).all(), steps


def _padded_shortcut_model(fmt: str) -> onnx.ModelProto:
    """q -> Add(Pad(s, pads)) -> Relu -> q, with the pads computed from constants as the CIFAR
    ResNets' option-A shortcut exports them (ConstantOfShape, Concat, Reshape)."""
    from onnx import numpy_helper

    def const(name, value, dtype=np.int64):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype), name))

    nodes = [
        const("n", [4]), helper.make_node("ConstantOfShape", ["n"], ["zeros"], value=numpy_helper.from_array(
            np.zeros(1, np.int64), "v")),
        const("mid", [0, 2, 0, 0]), helper.make_node("Concat", ["zeros", "mid"], ["flat"], axis=0),
        const("shape", [8]), helper.make_node("Reshape", ["flat", "shape"], ["pads"]),
        helper.make_node("Pad", ["s", "pads"], ["padded"]),  # 3 -> 5 channels
        make_quantize_node("x", "xq", fmt), helper.make_node("Add", ["xq", "padded"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["r"]), make_quantize_node("r", "y", fmt),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 5, 6, 6]),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, ["B", 3, 6, 6])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


@pytest.mark.parametrize("fmt", ["fixed:8:4", "minifloat:8:3"])
def test_an_add_whose_operand_shape_needs_constants_joins_the_chain(library, fmt):
    """onnx's shape inference leaves the padded shortcut's shape unknown; evaluating the small
    constant subgraph gives it, so q -> add -> relu -> q is one chain, with the bodies' bits."""
    model = _padded_shortcut_model(fmt)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    fused = fuse_chains(inferred)
    chains = [n for n in fused.graph.node if n.op_type == CHAIN_OP]
    assert [helper.get_attribute_value(c.attribute[0]).decode() for c in chains] == [f"{fmt}|add|relu|{fmt}"]
    assert {n.op_type for n in fused.graph.node}.isdisjoint({"Add", "Relu", "QuantizeSim"})
    rng = np.random.default_rng(15)
    feeds = {"x": (rng.standard_normal((2, 5, 6, 6)) * 4).astype(np.float32),
             "s": (rng.standard_normal((2, 3, 6, 6)) * 4).astype(np.float32)}
    feeds["x"][0, 0, 0, :3] = [0.0, -0.0, -1e-3]
    bodies = create_session(model, kernels=False).run(None, feeds)[0]
    assert same_bits(create_session(model).run(None, feeds)[0], bodies).all()
    assert same_bits(_kernel_session(fused, library).run(None, feeds)[0], bodies).all()


def test_constant_shapes_are_evaluated_once_per_model_structure(monkeypatch):
    """Plans of one model share one evaluation; another constant (the pads) is another model."""
    from ristretto_onnx.runtime import kernel_chains

    calls = []
    real = kernel_chains._evaluate_shapes
    monkeypatch.setattr(kernel_chains, "_evaluate_shapes", lambda m: calls.append(1) or real(m))
    monkeypatch.setattr(kernel_chains, "_SHAPE_CACHE", type(kernel_chains._SHAPE_CACHE)())
    first = kernel_chains._shapes_through_constants(_padded_shortcut_model("fixed:8:4"))
    assert first["padded"] == ("B", 5, 6, 6) and len(calls) == 1
    assert kernel_chains._shapes_through_constants(_padded_shortcut_model("minifloat:8:3")) == first
    assert len(calls) == 1  # another format: the same structure
    other = _padded_shortcut_model("fixed:8:4")
    mid = next(n for n in other.graph.node if n.output[0] == "mid")
    mid.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.array([0, 3, 0, 0], np.int64), "mid"))
    assert kernel_chains._shapes_through_constants(other)["padded"] == ("B", 6, 6, 6) and len(calls) == 2
