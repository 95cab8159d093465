"""The QuantizeSim kernel library (kernels/): bit-exact to the numpy reference, preferred by
onnxruntime over the function bodies, routed by the project's sessions, same results without it.

The library is built on first use (headers from Debian trixie's libonnxruntime-dev through apt).
Outside CI the tests skip with the reason when it cannot be built; in CI (``CI`` set) they fail.
"""

import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import PerChannel, Pow2, parse_format, quantize
from ristretto_onnx.range_rules import dfp_channel_format
from ristretto_onnx.ops import attach_functions, make_quantize_node
from ristretto_onnx.runtime import kernels
from ristretto_onnx.runtime.session import create_session

from tests.builders import same_bits
from ..core.test_ops import GRID, SPECIALS, _conv_net, boundary_values, random_bit_patterns


@pytest.fixture(scope="module")
def library():
    path = kernels.library_path(cuda=False)
    if path is None and os.environ.get(kernels.ENV, "").lower() not in ("off", "0", "none", "false"):
        from ristretto_onnx.runtime.kernels_build import build

        try:
            build(cuda=False)
        except RistrettoError as e:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"kernel library not built and cannot be built here: {e}")
        path = kernels.library_path(cuda=False)
    if path is None:
        pytest.skip("kernel library disabled (RISTRETTO_KERNELS=off)")
    return path


def _model(nodes, inputs, outputs, inits=(), functions=True):
    g = helper.make_graph(nodes, "k", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.ristretto", 1)],
                          ir_version=10)
    return attach_functions(m) if functions else m


def _kernel_session(model, library):
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _kernel_outputs(library, fmts, x):
    """One node per format, without function bodies (only the kernel can run them), on ``x``."""
    vi = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])]
    nodes = [make_quantize_node("x", f"y{i}", f) for i, f in enumerate(fmts)]
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["N"]) for i in range(len(fmts))]
    return _kernel_session(_model(nodes, vi, outs, functions=False), library).run(None, {"x": x})


def _check(fmt, got, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = quantize(x, fmt)
    ok = same_bits(got, want)
    if not ok.all():
        bad = np.nonzero(~ok)[0][:5]
        pytest.fail(f"{fmt}: kernel differs from numpy at x={x.ravel()[bad]!r}: {got.ravel()[bad]!r} vs {want.ravel()[bad]!r}")


def test_kernel_without_function_bodies_is_bit_exact_on_every_format(library):
    """Nodes without bodies: only the kernel can run them. Random float32 patterns (all binades,
    subnormals, inf, NaN), ties, binade and saturation edges, signed zeros."""
    x = np.concatenate([random_bit_patterns(50_000, 3), SPECIALS] + [boundary_values(f) for f in GRID])
    for fmt, y in zip(GRID, _kernel_outputs(library, GRID, x)):
        _check(fmt, y, x)


@pytest.mark.parametrize("fmt", [
    dfp_channel_format([0.01, 1.0, 40.0, 3e-5, 0.2], 8, axis=0),
    PerChannel((Pow2(-9, -2), Pow2(-8, -1), Pow2(-20, -10), Pow2(-3, 3), Pow2(-1, 6)), 0),
])
@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (5, 7)])
def test_per_channel_kernel_is_bit_exact(library, fmt, shape):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 2.0 ** rng.integers(-20, 8, shape)).astype(np.float32)
    x.ravel()[:11] = SPECIALS
    node = make_quantize_node("x", "y", fmt, rank=len(shape))
    dims = [f"d{i}" for i in range(len(shape))]
    m = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], functions=False)
    _check(fmt, _kernel_session(m, library).run(None, {"x": x})[0], x)
    # a tensor whose channel count disagrees with the format is an error, not a wrong number
    bad = np.zeros((4,) + shape[1:], np.float32)
    with pytest.raises(Exception, match="channel count"):
        _kernel_session(m, library).run(None, {"x": bad})


def test_registered_kernel_wins_over_the_function_body(library, tmp_path):
    """onnxruntime does not inline a local function that a provider claims: the kernel runs."""
    m = _conv_net(True)
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QuantizeSim") == 6 and "Round" not in ops  # weights too: a custom op is not folded


def test_project_sessions_route_weights_to_numpy_and_match_the_bodies(library):
    """create_session: weight quantizers become constants, the rest runs in the kernel, and the
    outputs equal the function-body session bit for bit, for every format kind."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    for act in ["fixed:8:4", "minifloat:8:4", "pow2:-8:1", "minifloat:6:3"]:
        m = _conv_net(True)
        for n in m.graph.node:
            if n.op_type == "QuantizeSim" and not n.input[0].startswith("w"):
                n.attribute[0].s = act.encode()
        m = attach_functions(m)
        routed = kernels.route(m)
        assert sum(n.op_type == "QuantizeSim" for n in routed.graph.node) == 3
        with_lib = create_session(m).run(None, {"x": x})[0]
        bodies = create_session(m, kernels=False).run(None, {"x": x})[0]
        assert same_bits(with_lib, bodies).all(), act
        assert not (with_lib == 0).all()


def test_stochastic_rounding_is_unbiased_seeded_and_thread_independent(library):
    x = np.full(200_000, 0.3, np.float32)
    fmts = ["fixed:8:3", "minifloat:8:4", "pow2:-8:-1"]
    vi = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])]
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["N"]) for i in range(3)]

    def model(seed):
        nodes = [make_quantize_node("x", f"y{i}", f, rounding="stochastic") for i, f in enumerate(fmts)]
        for n in nodes:
            n.attribute.append(helper.make_attribute("seed", seed))
        return _model(nodes, vi, outs, functions=False)

    s = _kernel_session(model(7), library)
    fixed, mini, p2 = s.run(None, {"x": x})
    assert set(np.unique(fixed)) == {0.25, 0.375} and abs(fixed.mean() - 0.3) < 2e-3
    assert set(np.unique(mini)) == {0.28125, 0.3125} and abs(mini.mean() - 0.3) < 2e-3
    assert set(np.unique(p2)) == {0.25, 0.5} and abs(p2.mean() - 0.3) < 3e-3
    second = s.run(None, {"x": x})[0]
    assert not np.array_equal(second, fixed)  # a new draw every run
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.register_custom_ops_library(str(library))
    again = ort.InferenceSession(model(7).SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert np.array_equal(again.run(None, {"x": x})[0], fixed)  # same seed, same sequence
    other = _kernel_session(model(8), library).run(None, {"x": x})[0]
    assert not np.array_equal(other, fixed)


def test_bad_format_attribute_fails_session_creation(library):
    node = helper.make_node("QuantizeSim", ["x"], ["y"], domain="ai.ristretto", format="fixed:40:3")
    m = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])], functions=False)
    with pytest.raises(Exception, match="2 to 32 bits"):
        _kernel_session(m, library)


def test_library_reports_its_kernels_and_is_not_registered_twice(library):
    assert kernels.library_providers(str(library))[0] == "cpu"
    so = ort.SessionOptions()
    assert kernels.register(so, library) == library
    assert kernels.register(so, library) == library  # marked: a second registration is a no-op
    m = _conv_net(True)
    create_session(m, options=so).run(None, {"x": np.ones((1, 3, 16, 16), np.float32)})


def test_library_can_be_switched_off(monkeypatch, library):
    monkeypatch.setenv(kernels.ENV, "off")
    assert kernels.library_path() is None
    monkeypatch.setenv(kernels.ENV, str(library.parent / "nothing-here"))
    with pytest.raises(RistrettoError, match="no such file"):
        kernels.library_path()


def test_kernels_command_shows_the_library(library):
    import subprocess
    import sys

    env = {**os.environ, kernels.ENV: str(library)}
    out = subprocess.run([sys.executable, "-m", "ristretto_onnx", "kernels"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and str(library) in out.stdout and "CPU yes" in out.stdout
    assert f"onnxruntime:  {ort.__version__}" in out.stdout
    out = subprocess.run([sys.executable, "-m", "ristretto_onnx", "kernels", "--path"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == str(library)
    env[kernels.ENV] = "off"
    out = subprocess.run([sys.executable, "-m", "ristretto_onnx", "kernels", "--path"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 1 and "no kernel library" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_resnet20_written_model_gives_identical_logits_with_and_without_the_library(library, zoo_env):
    """The written model (function bodies) and the same file in a session with the library:
    bit-identical logits on real CIFAR-10 images for every scheme, and through the Simulator."""
    from ristretto_onnx import zoo
    from ristretto_onnx.passes.pipeline import prepare, simulate
    from ristretto_onnx.ranges import measure_groups
    from ristretto_onnx.runtime.simulator import Simulator
    from ristretto_onnx.schemes import make_scheme, plan_for
    from ristretto_onnx.stats import CATEGORIES

    name = "resnet20-cifar10"
    try:
        path = zoo.resolve_model(f"zoo:{name}")
    except RistrettoError as e:
        pytest.skip(str(e))
    x = next(iter(zoo.model_dataset(name, "test").take(64).batches(64)))[0]
    prepared = prepare(str(path))
    ranges = measure_groups(prepared.float_model, prepared.layers, zoo.model_dataset(name, "calib").take(64))
    widths = {c: 8 for c in CATEGORIES}
    plans = {s: plan_for(make_scheme(s), ranges, widths) for s in ("dfp", "minifloat", "pow2")}
    for scheme, plan in plans.items():
        written = simulate(prepared, plan)
        bodies = create_session(written, kernels=False).run(None, {"input": x})[0]
        with_lib = create_session(written, blocked_layout=True).run(None, {"input": x})[0]
        assert same_bits(with_lib, bodies).all(), scheme
        sim = Simulator(prepared.annotated)
        sim.set_formats(plan, replace=True)
        assert same_bits(sim.run(x), bodies).all(), scheme
        assert np.isfinite(bodies).all() and bodies.std() > 0


@pytest.mark.parametrize("formats", [
    {"conv3/inputs": "fixed:2:0"},  # one kernel before a residual Add: fusions must not change
    {t: "minifloat:8:4" for t in ("conv1/inputs", "conv2/inputs", "conv3/inputs", "fc/inputs", "conv3/outputs")},
    {"conv1/weights": "pow2:-8:-1", "conv2/weights": "pow2:-9:-2", "conv2/outputs": "minifloat:7:3",
     "fc/inputs": "pow2:-6:3"},
])
def test_library_sessions_give_the_bits_of_the_function_bodies_on_a_residual_cnn(library, formats):
    """Whole-model equality: onnxruntime must optimize the graph around the kernel as around the
    inlined body (the kernel's outputs get their shapes), else later layers round differently."""
    from ristretto_onnx.runtime.simulator import Simulator

    from tests.builders import annotate, images, residual_cnn

    model = annotate(residual_cnn())
    x = images(24)
    sim = Simulator(model, parametric=False)
    plan = {t: None for t in sim.targets} | formats
    sim.set_formats(plan)
    bodies = create_session(sim.model(), kernels=False).run(None, {"input": x})[0]
    assert same_bits(create_session(sim.model()).run(None, {"input": x})[0], bodies).all()
    assert same_bits(sim.run(x), bodies).all()
    assert bodies.std() > 0


def test_the_interface_revision_is_the_same_in_the_sources_and_the_library(library):
    import re
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / "kernels" / "ristretto_kernels.cc").read_text()
    assert int(re.search(r"RistrettoKernelsAbi\(\) \{ return (\d+);", source).group(1)) == kernels.KERNEL_ABI
    assert kernels.library_abi(str(library)) == kernels.KERNEL_ABI


def test_a_library_built_from_older_sources_is_not_used(tmp_path, monkeypatch, capsys):
    import shutil
    import subprocess

    if shutil.which("g++") is None:
        pytest.skip("no g++")
    # An old build: it names its kernels but has no interface revision (revision 1).
    src = tmp_path / "old.cc"
    src.write_text('extern "C" const char* RistrettoKernelsProviders() { return "cpu"; }\n')
    old = tmp_path / "libristretto_kernels.so"
    subprocess.run(["g++", "-shared", "-fPIC", str(src), "-o", str(old)], check=True, timeout=120)
    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.setattr(kernels, "build_dir", lambda: tmp_path)
    assert kernels.library_abi(str(old)) == 1
    assert kernels.library_path(cuda=False) is None  # the function bodies run: same results
    assert kernels.stale_libraries() == [old]
    from ristretto_onnx.cli import main

    assert main(["kernels"]) == 0
    out = capsys.readouterr().out
    assert "stale:" in out and "function bodies" in out
    monkeypatch.setenv(kernels.ENV, str(old))  # named explicitly: an error, not a silent fallback
    with pytest.raises(RistrettoError, match="kernel interface 1, this ristretto-onnx needs 2"):
        kernels.library_path()
