"""The graph layer: constants through Constant/Transpose/Cast/Reshape chains, the questions
passes ask, and an export that keeps the source's bytes when nothing changed."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.graph import (
    constant_lookup, consumer_lookup, elem_type, export_model, import_graph, output_names, runtime_inputs,
    single_input, sole_consumer, static_shape, subgraph_inputs, unique_name,
)
from ristretto_onnx.passes.load import load_model
from tests import builders


def test_constants_resolve_through_constant_transpose_and_cast_chains():
    m = builders.constant_weights()
    constant = constant_lookup(m)
    wt = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "wt"))
    w16 = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w16"))
    np.testing.assert_array_equal(constant("wtT"), wt.T)
    cast = constant("w16f")
    assert cast.dtype == np.float32
    np.testing.assert_array_equal(cast, w16.astype(np.float32))
    assert constant("wc").shape == (4, 3, 3, 3)
    assert constant("x") is None and constant("c") is None and constant("h") is None


def test_reshape_squeeze_unsqueeze_of_constants_are_constants():
    w = np.arange(12, dtype=np.float32)
    nodes = [
        helper.make_node("Reshape", ["w", "shape"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "axes"], ["u"]),
        helper.make_node("Squeeze", ["u", "axes"], ["s"]),
        helper.make_node("Flatten", ["u"], ["f"], axis=2),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    inits = [builders.init("w", w), builders.init("shape", np.array([3, -1], np.int64)),
             builders.init("axes", np.array([0], np.int64))]
    constant = constant_lookup(builders.model(nodes, inits, x_shape=(3, 4), y_shape=[3, 4]))
    assert constant("r").shape == (3, 4)
    assert constant("u").shape == (1, 3, 4)
    np.testing.assert_array_equal(constant("s"), w.reshape(3, 4))
    assert constant("f").shape == (3, 4)
    assert constant("y") is None


def test_runtime_inputs_exclude_inputs_with_initializer_defaults():
    m = builders.weights_as_inputs()
    assert runtime_inputs(m) == ["x", "wr"] == runtime_inputs(import_graph(m))
    constant = constant_lookup(m)
    assert constant("w1") is not None and constant("wr") is None
    with pytest.raises(RistrettoError, match="compress needs a model with one input; this one has 2: x, wr"):
        single_input(m, "compress")
    assert single_input(builders.conv_relu_conv(), "compress") == "x"


def test_producers_consumers_and_sole_consumer():
    graph = import_graph(load_model(builders.inception()))
    tensors, outputs = graph.tensors(), output_names(graph)
    assert tensors["sr"].inputs[0].name == "squeeze_relu"
    assert sorted(n.name for n in tensors["sr"].outputs) == ["expand1x1", "expand3x3"]
    assert sole_consumer(tensors["sr"], outputs) is None
    assert sole_consumer(tensors["s"], outputs).name == "squeeze_relu"
    assert sole_consumer(tensors["y"], outputs) is None  # a graph output is never solely consumed
    assert elem_type(tensors["x"]) == TensorProto.FLOAT
    assert static_shape(tensors["ws"]) == (2, 3, 1, 1)


def test_subgraph_reads_are_found_on_protos_and_graphs():
    then = helper.make_graph([helper.make_node("Identity", ["outer"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])])
    nodes = [helper.make_node("Relu", ["x"], ["outer"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    m = builders.model(nodes, [builders.init("cond", np.array(True))], x_shape=(1,), y_shape=[1])
    assert subgraph_inputs(m.graph.node[1]) == {"outer", "x"}
    assert subgraph_inputs(import_graph(m).nodes[1]) == {"outer", "x"}


def test_readers_are_top_level_nodes_once_per_slot_and_per_body():
    then = helper.make_graph([helper.make_node("Relu", ["outer"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    other = helper.make_graph([helper.make_node("Neg", ["outer"], ["n"]),
                               helper.make_node("Add", ["n", "outer"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])])
    nodes = [helper.make_node("Abs", ["x"], ["outer"]),
             helper.make_node("Mul", ["outer", "outer"], ["sq"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    m = builders.model(nodes, [builders.init("cond", np.array(True))], x_shape=(1,), y_shape=[1])
    graph = import_graph(m)
    readers = consumer_lookup(graph)
    tensors = graph.tensors()
    # graphsurgeon lists the bodies' Relu, Neg and Add; the top level sees Mul twice, If per body
    assert [n.op for n in readers(tensors["outer"])] == ["Mul", "Mul", "If", "If"]
    assert [n.op for n in readers(tensors["x"])] == ["Abs"]
    flat = import_graph(load_model(builders.inception()))
    assert sorted(n.name for n in consumer_lookup(flat)(flat.tensors()["sr"])) == ["expand1x1", "expand3x3"]


@pytest.mark.parametrize("build", ["residual_block", "inception", "weights_as_inputs", "constant_weights"])
def test_import_and_export_write_the_source_bytes_and_leave_it_alone(build):
    m = load_model(getattr(builders, build)())
    before = m.SerializeToString()
    out = export_model(import_graph(m), m)
    assert out.SerializeToString() == before
    assert m.SerializeToString() == before


def test_export_keeps_initializer_order_and_appends_new_constants():
    m = load_model(builders.residual_block())
    graph = import_graph(m)
    import onnx_graphsurgeon as gs

    conv = graph.nodes[0]
    conv.inputs[1] = gs.Constant("w_new", np.ones((3, 3, 3, 3), np.float32))
    out = export_model(graph, m)
    old = [t.name for t in m.graph.initializer if t.name != "w1"]
    assert [t.name for t in out.graph.initializer] == old + ["w_new"]


def test_unique_name():
    taken = {"a", "a_1"}
    assert unique_name("a", taken) == "a_2"
    assert unique_name("b", taken) == "b"
    assert {"a_2", "b"} <= taken
