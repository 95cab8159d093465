"""The pass contract: named transformations returning (graph, changed), pipelines read top to
bottom, errors that name the pass, and analyses that never edit the graph they read."""

from __future__ import annotations

import pytest

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.analysis.clip_bounds import clip_bounds
from ristretto_onnx.passes.analysis.concat_ties import concat_ties
from ristretto_onnx.passes.analysis.find_layers import find_layers
from ristretto_onnx.passes.contract import PassResult, Transformation, run_pipeline
from ristretto_onnx.passes.graph import export_model, import_graph
from ristretto_onnx.passes.load import load_model
from ristretto_onnx.passes.slots import Slot
from ristretto_onnx.passes.transforms.fold_batchnorm import FoldBatchNorm
from ristretto_onnx.passes.transforms.set_formats import SetFormats
from tests import builders


class _Count(Transformation):
    """Changes the graph ``times`` times (a stand-in for a rewrite that reaches a fixed point)."""

    def __init__(self, name: str, log: list, times: int = 0) -> None:
        self.name, self.log, self.left = name, log, times

    def apply(self, graph):
        self.log.append(self.name)
        changed = self.left > 0
        self.left -= changed
        return PassResult(graph, changed)


def test_a_pipeline_runs_top_to_bottom_and_reports_whether_anything_changed():
    graph = import_graph(builders.conv_relu_conv())
    log: list[str] = []
    result = run_pipeline(graph, [_Count("a", log), _Count("b", log)])
    assert log == ["a", "b"] and result.changed is False and result.graph is graph
    log.clear()
    result = run_pipeline(graph, [_Count("a", log, times=2), _Count("b", log)], until_fixed_point=True)
    assert log == ["a", "b"] * 3 and result.changed is True


def test_a_failing_pass_names_itself():
    graph = import_graph(builders.conv_relu_conv())
    missing = (Slot("conv1/weights", "qslot:nowhere", "w1", "w1_q"),)
    with pytest.raises(RistrettoError, match=r"^pass set_formats: quantizer slot node 'qslot:nowhere'"):
        run_pipeline(graph, [SetFormats(missing, {}, "nearest_even")])


def test_fold_batchnorm_says_when_it_changed_the_graph():
    assert FoldBatchNorm()(import_graph(load_model(builders.residual_block()))).changed
    assert not FoldBatchNorm()(import_graph(load_model(builders.conv_relu_conv()))).changed


@pytest.mark.parametrize("build", ["residual_block", "inception", "matmul_add", "shared_weights",
                                   "constant_weights", "weights_as_inputs"])
def test_analyses_never_edit_the_graph(build):
    model = load_model(getattr(builders, build)())
    graph = import_graph(model)
    before = export_model(graph, model).SerializeToString()
    layers = find_layers(graph)
    concat_ties(graph, layers)
    clip_bounds(graph, layers)
    assert export_model(graph, model).SerializeToString() == before
    assert layers.layers  # every pattern has at least one layer to find
