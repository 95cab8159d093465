"""QuantizeSim in plain onnxruntime equals the numpy definitions bit for bit.

Three implementations must agree: the standard-op function bodies run by onnxruntime, the
reference in ``ristretto_onnx.formats`` and the independent one in ``independent.py``.
"""

import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import parse_format, quantize
from ristretto_onnx.ops import (
    DOMAIN,
    attach_functions,
    function_proto,
    make_quantize_node,
    overload_name,
)

from .independent import reference
from tests.builders import quantizer_model, run_quantizers, same_bits

FIXED = [f"fixed:{b}:{f}" for b in range(2, 17) for f in sorted({-3, 0, 1, b // 2, b - 1, b, b + 3, 20})]
FIXED += ["fixed:24:12", "fixed:25:24", "fixed:32:0", "fixed:32:16", "fixed:32:126", "fixed:8:126", "fixed:8:-120"]
MINIFLOAT = [f"minifloat:{b}:{e}" for b in range(4, 17) for e in range(1, min(b - 1, 7) + 1)]
MINIFLOAT += ["minifloat:2:1", "minifloat:3:1", "minifloat:3:2", "minifloat:24:7", "minifloat:31:7"]
POW2 = ["pow2:-8:-1", "pow2:-4:3", "pow2:0:0", "pow2:-16:0", "pow2:-125:126", "pow2:-1:6"]
GRID = FIXED + MINIFLOAT + POW2


def random_bit_patterns(n: int, seed: int) -> np.ndarray:
    """Every float32 bit pattern is equally likely: all binades, subnormals, inf and NaN."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)


def boundary_values(fmt: str) -> np.ndarray:
    """Ties, binade edges, saturation edges and their float32 neighbours for one format."""
    f = parse_format(fmt)
    pts = [0.0, f.step, f.smallest_positive, f.max_value, f.min_value, 2 * f.max_value, 1.0, 0.5, 2.0]
    pts += list(np.arange(-64, 65) * f.step / 2)  # ties and representable values near zero
    pts += list(f.smallest_positive * 2.0 ** np.arange(0, 40))  # binade edges
    pts += list(f.smallest_positive * 2.0 ** np.arange(0, 40) * 1.5)
    pts += list(f.smallest_positive * 2.0 ** (np.arange(0, 40) + 0.5))  # pow2 thresholds
    v = np.array(pts, np.float64)
    v = v[np.abs(v) < 3e38].astype(np.float32)
    v = np.concatenate([v, -v])
    up = np.nextafter(v, np.float32(np.inf))
    down = np.nextafter(v, np.float32(-np.inf))
    return np.concatenate([v, up, down])


SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.17549435e-38,
                     3.4028235e38, -3.4028235e38, 1e-40], np.float32)


def assert_bit_exact(fmt: str, got: np.ndarray, x: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = quantize(x, fmt)
        ind = reference(x, fmt)
    for name, want in (("ristretto_onnx.formats", ref), ("independent", ind)):
        ok = same_bits(got, want)
        if not ok.all():
            bad = np.nonzero(~ok)[0][:5]
            pytest.fail(f"{fmt}: onnxruntime differs from {name} at x={x[bad]!r}: {got[bad]!r} vs {want[bad]!r}")


def test_grid_of_formats_is_bit_exact_on_boundaries_and_random_patterns():
    """Every format in the grid, in one session: its own boundary values + 20k random patterns."""
    x = np.concatenate([random_bit_patterns(20_000, 0), SPECIALS] + [boundary_values(f) for f in GRID[::7]])
    for chunk in range(0, len(GRID), 60):
        fmts = GRID[chunk:chunk + 60]
        xs = np.concatenate([x] + [boundary_values(f) for f in fmts])
        for fmt, got in zip(fmts, run_quantizers(fmts, xs)):
            assert_bit_exact(fmt, got, xs)


def test_one_million_random_values_for_every_format_kind():
    """The acceptance check: a hand-built model with every kind, a million random float32 values."""
    rng = np.random.default_rng(7)
    x = np.concatenate([
        random_bit_patterns(700_000, 1),
        (rng.standard_normal(300_000) * rng.choice([1e-3, 0.1, 1.0, 30.0], 300_000)).astype(np.float32),
        SPECIALS,
    ])
    fmts = ["fixed:8:4", "fixed:4:6", "fixed:16:-2", "minifloat:8:4", "minifloat:6:5", "minifloat:16:5",
            "pow2:-8:-1", "pow2:-3:3"]
    for fmt, got in zip(fmts, run_quantizers(fmts, x)):
        assert_bit_exact(fmt, got, x)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(GRID),
    hnp.arrays(np.float32, st.integers(1, 200), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
)
def test_property_any_float32_any_format(fmt, x):
    (got,) = run_quantizers([fmt], x)
    assert_bit_exact(fmt, got, x)


def test_nan_gives_nan_in_every_kind():
    fmts = ["fixed:8:4", "minifloat:8:4", "pow2:-8:-1"]
    x = np.full(1000, np.nan, np.float32)
    for got in run_quantizers(fmts, x):
        assert np.isnan(got).all()


def test_stochastic_rounding_runs_in_onnxruntime_and_is_unbiased():
    x = np.full(100_000, 0.3, np.float32)
    fixed, mini, p2 = run_quantizers(["fixed:8:3", "minifloat:8:4", "pow2:-8:-1"], x, rounding="stochastic")
    assert set(np.unique(fixed)) == {0.25, 0.375} and abs(fixed.mean() - 0.3) < 2e-3
    assert set(np.unique(mini)) == {0.28125, 0.3125} and abs(mini.mean() - 0.3) < 2e-3
    assert set(np.unique(p2)) == {0.25, 0.5} and abs(p2.mean() - 0.3) < 3e-3


def test_attach_functions_adds_one_body_per_distinct_configuration_and_is_idempotent():
    m = quantizer_model(["fixed:8:4", "fixed:8:4", "minifloat:8:4"])
    assert len(m.functions) == 2
    assert {f.overload for f in m.functions} == {overload_name("fixed:8:4"), overload_name("minifloat:8:4")}
    assert m.ir_version >= 10 and any(i.domain == DOMAIN for i in m.opset_import)
    again = attach_functions(m)
    assert again.SerializeToString() == m.SerializeToString()
    onnx.checker.check_model(m, full_check=True)


def test_attach_functions_makes_a_hand_built_node_runnable_and_drops_stale_bodies():
    m = quantizer_model(["fixed:8:4"])
    m.graph.node[0].attribute[0].s = b"pow2:-8:-1"  # edit the format by hand, body now stale
    fixed = attach_functions(m)
    assert [f.overload for f in fixed.functions] == [overload_name("pow2:-8:-1")]
    from ristretto_onnx.runtime.session import create_session

    out = create_session(fixed).run(None, {"x": np.array([0.3, -0.1], np.float32)})[0]
    np.testing.assert_array_equal(out, [0.25, -0.125])


def test_input_model_is_not_modified():
    m = quantizer_model(["fixed:8:4"])
    m.graph.node[0].attribute[0].s = b"fixed:4:2"
    before = m.SerializeToString()
    attach_functions(m)
    assert m.SerializeToString() == before


def test_bad_nodes_and_opsets_give_clear_errors():
    with pytest.raises(RistrettoError, match="opset >= 13"):
        function_proto("fixed:8:4", opset=11)
    m = quantizer_model(["fixed:8:4"])
    m.graph.node[0].attribute[0].s = b"fixed:99:0"
    with pytest.raises(RistrettoError, match="2 to 32 bits"):
        attach_functions(m)
    with pytest.raises(RistrettoError, match="rounding"):
        make_quantize_node("a", "b", "fixed:8:4", rounding="up")


def _conv_net(with_quant: bool, opset: int = 17) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(3):
        w = numpy_helper.from_array(rng.standard_normal((8, 8 if i else 3, 3, 3)).astype(np.float32) * 0.2, f"w{i}")
        inits.append(w)
        xin, win = x, f"w{i}"
        if with_quant:
            nodes += [make_quantize_node(x, f"{x}_q", "fixed:8:4"), make_quantize_node(f"w{i}", f"w{i}_q", "fixed:8:6")]
            xin, win = f"{x}_q", f"w{i}_q"
        nodes.append(helper.make_node("Conv", [xin, win], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    g = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return attach_functions(m) if with_quant else m


def test_weight_quantizers_fold_away_at_session_creation(tmp_path):
    from ristretto_onnx.runtime.session import create_session, session_options

    so = session_options()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    create_session(_conv_net(True), options=so, kernels=False)  # function bodies, not the library
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    ops = [n.op_type for n in opt.graph.node]
    # 3 activation quantizers remain (4 ops each once inlined); the weight ones became constants
    assert ops.count("Round") == 3 and ops.count("Clip") == 3


def test_conv_with_quantized_inputs_and_weights_equals_numpy():
    from ristretto_onnx.runtime.session import create_session

    m = _conv_net(True)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = create_session(m).run(None, {"x": x})[0]
    # same net without quantizers, fed by numpy-quantized weights and inputs, with quantizers on
    # the intermediate activations emulated by running layer by layer
    plain = _conv_net(False)
    w = {i.name: onnx.numpy_helper.to_array(i) for i in plain.graph.initializer}
    act = x
    for i in range(3):
        act = quantize(act, "fixed:8:4")
        wq = quantize(w[f"w{i}"], "fixed:8:6")
        act = np.maximum(_np_conv(act, wq), 0)
    np.testing.assert_allclose(got, act, rtol=1e-5, atol=1e-5)


def _np_conv(x, w):
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, dy:dy + h, dx:dx + wd], w[:, :, dy, dx])
    return out.astype(np.float32)
