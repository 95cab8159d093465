"""The written model's reuse of quantizers and skipped ReLUs (set_formats) on real zoo networks:
bit for bit the literal data path (every slot its own QuantizeSim, every ReLU kept), in a stock
session and in a project session with the kernel library."""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_onnx import zoo
from ristretto_onnx.passes.analysis.concat_ties import concat_ties
from ristretto_onnx.passes.grid_ties import grid_sources, round_once
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.passes.slots import read_skipped_relus
from ristretto_onnx.ranges import measure_groups
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.schemes import make_scheme, plan_for
from tests.builders import literal_model, same_bits

#: model: (dropped input quantizers, skipped ReLUs) at dfp 8 with ufixed activations, measured
DROPPED = {"lenet-mnist": (3, 1), "resnet20-cifar10": (10, 10), "squeezenet1.1-imagenet": (25, 26)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DROPPED))
def test_written_dfp_model_equals_the_literal_data_path_bit_for_bit(zoo_env, name):
    prepared = prepare(str(zoo.resolve_model(f"zoo:{name}")))
    calib = zoo.model_dataset(name, "calib").take(64)
    ranges = measure_groups(prepared.float_model, prepared.layers, calib, unsigned=True)
    scheme = make_scheme("dfp")
    plan = plan_for(scheme, ranges, {c: 8 for c in scheme.categories})
    plan = round_once(plan, grid_sources(prepared.float_model, prepared.layers),
                      concat_ties(prepared.float_model, prepared.layers))
    written = simulate(prepared, plan)
    literal = literal_model(written)
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    dropped = count(literal, "QuantizeSim") - count(written, "QuantizeSim")
    assert (dropped, len(read_skipped_relus(written))) == DROPPED[name]
    x = np.ascontiguousarray(next(iter(zoo.model_dataset(name, "test").take(64).batches(64)))[0])
    inp = prepared.float_model.graph.input[0].name
    reference = create_session(literal, kernels=False).run(None, {inp: x})[0]
    for kernels in (False, True):
        out = create_session(written, kernels=kernels).run(None, {inp: x})[0]
        assert same_bits(out, reference).all(), (name, kernels)
