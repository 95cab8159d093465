"""Structural checks a model must pass before onnxruntime sees it (issue 10, Deliver 5).

``onnx.checker`` checks the graph's wiring and each node against its operator schema, but not
everything onnxruntime trusts: an initializer whose bytes do not match its dims and type (a bad
download, a flipped dtype field), a graph with no outputs, nodes in operator domains nothing
here can run, or shapes that contradict each other. onnxruntime meets those with a C++ error at
best. This module turns each into one clear line, before the first session is built; the fuzz
test (tests/reliability/test_fuzz.py) feeds it mutated zoo models.

The checks only read sizes and fields: no weight is copied, so a 2 GB model costs nothing extra.
"""

from __future__ import annotations

import math

import onnx
from onnx import ModelProto, TensorProto

from ristretto_onnx.errors import RistrettoError

#: Operator domains a model may use: ONNX itself and our QuantizeSim (with its function bodies).
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.ristretto"})

_LISTS = {onnx.AttributeProto.INTS: "ints", onnx.AttributeProto.FLOATS: "floats",
          onnx.AttributeProto.STRINGS: "strings"}

_TYPED_FIELD = {
    TensorProto.FLOAT: "float_data", TensorProto.COMPLEX64: "float_data",
    TensorProto.DOUBLE: "double_data", TensorProto.COMPLEX128: "double_data",
    TensorProto.INT64: "int64_data", TensorProto.UINT32: "uint64_data", TensorProto.UINT64: "uint64_data",
    TensorProto.STRING: "string_data",
}


def validate(model: ModelProto) -> None:
    """Raise a one-line :class:`RistrettoError` for the problems of the module docstring."""
    graph = model.graph
    if len(graph.output) == 0:
        raise RistrettoError("the model's graph has no outputs")
    if len(graph.node) == 0:
        raise RistrettoError("the model's graph has no nodes")
    inits = {t.name for t in graph.initializer}
    for value in list(graph.input) + list(graph.output):
        if value.name not in inits and value.type.tensor_type.elem_type == TensorProto.UNDEFINED:
            raise RistrettoError(f"the model's {'input' if value in graph.input else 'output'} "
                                 f"{value.name!r} has no element type")
    local = {(f.domain, f.name) for f in model.functions}
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in _LISTS and not len(getattr(attr, _LISTS[attr.type])):
                raise RistrettoError(f"attribute {attr.name!r} of node {node.name or node.op_type!r} "
                                     "is an empty list")
        if node.domain not in KNOWN_DOMAINS and (node.domain, node.op_type) not in local:
            raise RistrettoError(f"node {node.name or node.op_type!r} uses operator {node.op_type!r} of domain "
                                 f"{node.domain!r}; only standard ONNX operators are supported")
    for tensor in graph.initializer:
        check_initializer(tensor)


def check_initializer(t: TensorProto) -> None:
    """The stored payload of ``t`` matches its dims and element type."""
    if t.data_location == TensorProto.EXTERNAL:
        return  # loaded with the model; onnx checks the file's length
    if any(d < 0 for d in t.dims):
        raise RistrettoError(f"initializer {t.name!r} has a negative dimension {list(t.dims)}")
    count = math.prod(t.dims)
    name = TensorProto.DataType.Name(t.data_type) if t.data_type in TensorProto.DataType.values() else str(t.data_type)
    if t.data_type == TensorProto.UNDEFINED or t.data_type not in TensorProto.DataType.values():
        raise RistrettoError(f"initializer {t.name!r} has no valid element type ({name})")
    if t.HasField("raw_data"):
        if t.data_type == TensorProto.STRING:
            raise RistrettoError(f"initializer {t.name!r}: a STRING tensor cannot have raw data")
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        bits = {TensorProto.INT4: 4, TensorProto.UINT4: 4}.get(t.data_type)
        expected = (count * bits + 7) // 8 if bits else count * itemsize
        if len(t.raw_data) != expected:
            raise RistrettoError(f"initializer {t.name!r} holds {len(t.raw_data)} bytes but its shape "
                                 f"{list(t.dims)} of {name} needs {expected}: the model file is corrupt")
        return
    field = _TYPED_FIELD.get(t.data_type, "int32_data")
    stored = len(getattr(t, field))
    expected = count * (2 if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1)
    if stored != expected and not (stored == 0 and count == 0):
        raise RistrettoError(f"initializer {t.name!r} holds {stored} values but its shape {list(t.dims)} "
                             f"needs {expected}: the model file is corrupt")
