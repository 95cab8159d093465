"""GraphIndex: producers, consumers, constants through Constant/Transpose/Cast/Reshape chains."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ristretto_onnx.passes.graph_index import GraphIndex, unique_name
from tests.passes import synth


def test_constants_resolve_through_constant_transpose_and_cast_chains():
    m = synth.constant_weights()
    index = GraphIndex(m.graph)
    wt = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "wt"))
    w16 = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w16"))
    np.testing.assert_array_equal(index.constant_value("wtT"), wt.T)
    cast = index.constant_value("w16f")
    assert cast.dtype == np.float32
    np.testing.assert_array_equal(cast, w16.astype(np.float32))
    assert index.constant_value("wc").shape == (4, 3, 3, 3)
    assert not index.is_constant("x") and not index.is_constant("c") and not index.is_constant("h")


def test_reshape_squeeze_unsqueeze_of_constants_are_constants():
    w = np.arange(12, dtype=np.float32)
    nodes = [
        helper.make_node("Reshape", ["w", "shape"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "axes"], ["u"]),
        helper.make_node("Squeeze", ["u", "axes"], ["s"]),
        helper.make_node("Flatten", ["u"], ["f"], axis=2),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    inits = [synth.init("w", w), synth.init("shape", np.array([3, 0, -1], np.int64)[[0, 2]]),
             synth.init("axes", np.array([0], np.int64))]
    m = synth.model(nodes, inits, x_shape=(3, 4), y_shape=[3, 4])
    index = GraphIndex(m.graph)
    assert index.constant_value("r").shape == (3, 4)
    assert index.constant_value("u").shape == (1, 3, 4)
    np.testing.assert_array_equal(index.constant_value("s"), w.reshape(3, 4))
    assert index.constant_value("f").shape == (3, 4)
    assert index.constant_value("y") is None


def test_runtime_inputs_exclude_inputs_with_initializer_defaults():
    index = GraphIndex(synth.weights_as_inputs().graph)
    assert index.runtime_inputs == ("x", "wr")
    assert index.is_constant("w1")  # a graph input with a default is a weight
    assert not index.is_constant("wr")


def test_producers_consumers_and_sole_consumer():
    m = synth.inception()
    index = GraphIndex(m.graph)
    assert index.producer["sr"].name == "squeeze_relu"
    assert sorted(n.name for n in index.consumers_of("sr")) == ["expand1x1", "expand3x3"]
    assert index.sole_consumer("sr") is None
    assert index.sole_consumer("s").name == "squeeze_relu"
    assert index.sole_consumer("y") is None  # a graph output is never solely consumed
    assert index.elem_type("x") == TensorProto.FLOAT
    assert index.shape("ws") == (2, 3, 1, 1)


def test_subgraph_captures_count_as_reads():
    then = helper.make_graph([helper.make_node("Identity", ["outer"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])])
    nodes = [helper.make_node("Relu", ["x"], ["outer"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    m = synth.model(nodes, [synth.init("cond", np.array(True))], x_shape=(1,), y_shape=[1])
    index = GraphIndex(m.graph)
    assert [n.op_type for n in index.consumers_of("outer")] == ["If"]


def test_unique_name():
    taken = {"a", "a_1"}
    assert unique_name("a", taken) == "a_2"
    assert unique_name("b", taken) == "b"
    assert {"a_2", "b"} <= taken
