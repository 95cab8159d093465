"""prepare/simulate: the whole pass pipeline on every graph pattern, opsets 11-21, dynamic batch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ristretto_onnx.formats import Fixed
from ristretto_onnx.ops import default_opset
from ristretto_onnx.passes import save as save_module
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.passes.save import save_model
from ristretto_onnx.runtime.session import create_session
from tests import builders as synth
from tests.passes.transforms.test_insert_quantizers import PATTERNS


def _run(m, x):
    return create_session(m).run(None, {"x": x})[0]


def _wide(prepared):
    """A format so fine that the simulated model must equal the float one closely."""
    return {g: Fixed(32, 20) for g in prepared.layers.group_ids}


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_runs_and_a_wide_format_keeps_the_outputs(pattern):
    m = getattr(synth, pattern)()
    prepared = prepare(m)
    sim = simulate(prepared, _wide(prepared))
    onnx.checker.check_model(sim)
    assert sum(n.op_type == "QuantizeSim" for n in sim.graph.node) >= 2 * len(prepared.layers)
    for batch in (1, 5):  # dynamic batch
        x = synth.sample_input(m, batch=batch)
        ref = _run(m, x)
        np.testing.assert_allclose(_run(sim, x), ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("opset", [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21])
def test_opsets_11_to_21(opset):
    m = synth.residual_block()
    m.opset_import[0].version = opset
    prepared = prepare(m)
    assert default_opset(prepared.annotated) == max(opset, 13)
    sim = simulate(prepared, _wide(prepared))
    x = synth.sample_input(m)
    np.testing.assert_allclose(_run(sim, x), _run(m, x), atol=1e-4)


def test_no_fold_bn_keeps_batchnorm():
    kept = prepare(synth.residual_block(), fold_bn=False)
    assert sum(n.op_type == "BatchNormalization" for n in kept.float_model.graph.node) == 2
    assert [l.bias for l in kept.layers] == [None, None]
    folded = prepare(synth.residual_block())
    assert not any(n.op_type == "BatchNormalization" for n in folded.float_model.graph.node)


def test_external_data_model_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(save_module, "EXTERNAL_MIN_BYTES", 64)
    m = synth.flatten_gemm()
    on_disk = synth.flatten_gemm()  # onnx.save converts the proto it is given in place
    onnx.save(on_disk, tmp_path / "in.onnx", save_as_external_data=True, location="in.data", size_threshold=0)
    prepared = prepare(tmp_path / "in.onnx")
    sim = simulate(prepared, _wide(prepared))
    monkeypatch.setattr(save_module, "PROTO_LIMIT", 1000)  # as if the output were over 2 GB
    save_model(sim, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").is_file()
    x = synth.sample_input(m)
    np.testing.assert_allclose(create_session(tmp_path / "out.onnx").run(None, {"x": x})[0], _run(m, x),
                               atol=1e-4)
