"""Seeded mutations of an ONNX model, for the crash-safety fuzz test (issue 10, Deliver 5).

Each mutation is a small, realistic corruption: what a bad download, a hand-edited graph or a
buggy exporter produces. ``mutate(model_bytes, seed)`` returns ``(kind, bytes)``; the same seed
always gives the same bytes.
"""

from __future__ import annotations

import random

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto

KINDS = ("bitflip", "truncate", "attribute", "drop_attribute", "input_shape", "initializer_dims",
         "input_dtype", "initializer_dtype", "drop_initializer", "opset", "op_type", "dangling_input",
         "ir_version", "drop_output", "initializer_values", "duplicate_node", "domain")


def _bitflip(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(0, len(data))]


def _edit(model: onnx.ModelProto, kind: str, rng: random.Random) -> None:
    g = model.graph
    nodes = list(g.node)
    if kind == "attribute":
        cands = [(n, a) for n in nodes for a in n.attribute]
        if not cands:
            return
        n, a = rng.choice(cands)
        if a.type == AttributeProto.INT:
            a.i = rng.choice([-1, 0, 2, 3, 7, 1 << 20, -(1 << 31)])
        elif a.type == AttributeProto.INTS:
            vals = [rng.choice([-2, 0, 1, 2, 5, 99]) for _ in range(rng.randint(0, len(a.ints) + 2))]
            del a.ints[:]
            a.ints.extend(vals)
        elif a.type == AttributeProto.FLOAT:
            a.f = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e30])
        else:
            a.type = AttributeProto.INT if a.type != AttributeProto.INT else AttributeProto.FLOAT
    elif kind == "drop_attribute":
        cands = [n for n in nodes if len(n.attribute)]
        if cands:
            n = rng.choice(cands)
            del n.attribute[rng.randrange(len(n.attribute))]
    elif kind == "input_shape":
        dims = g.input[0].type.tensor_type.shape.dim
        d = dims[rng.randrange(len(dims))]
        choice = rng.choice(["value", "param", "drop", "extra"])
        if choice == "value":
            d.dim_value = rng.choice([0, 1, 3, 7, 1000])
        elif choice == "param":
            d.dim_param = "x"
        elif choice == "drop":
            del dims[rng.randrange(len(dims))]
        else:
            dims.add().dim_value = rng.choice([1, 2])
    elif kind == "initializer_dims":
        t = rng.choice(list(g.initializer))
        if t.dims:
            i = rng.randrange(len(t.dims))
            t.dims[i] = rng.choice([0, 1, t.dims[i] + 1, 2 * t.dims[i]])
    elif kind == "input_dtype":
        g.input[0].type.tensor_type.elem_type = rng.choice(
            [TensorProto.INT64, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.UINT8, TensorProto.STRING, 0])
    elif kind == "initializer_dtype":
        t = rng.choice(list(g.initializer))
        t.data_type = rng.choice([TensorProto.INT64, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT8,
                                  TensorProto.BOOL, TensorProto.STRING])
    elif kind == "drop_initializer":
        del g.initializer[rng.randrange(len(g.initializer))]
    elif kind == "opset":
        model.opset_import[0].version = rng.choice([1, 6, 9, 10, 11, 12, 13, 16, 22, 25, 99])
    elif kind == "op_type":
        n = rng.choice(nodes)
        n.op_type = rng.choice(["Conv", "Gemm", "MatMul", "Relu", "MaxPool", "Flatten", "FooBar", "Add",
                                "BatchNormalization", "QuantizeSim", "Softmax"])
    elif kind == "dangling_input":
        n = rng.choice([n for n in nodes if n.input])
        n.input[rng.randrange(len(n.input))] = rng.choice(["nowhere", "", n.output[0]])
    elif kind == "ir_version":
        model.ir_version = rng.choice([0, 1, 3, 7, 11, 12, 99])
    elif kind == "drop_output":
        del g.output[0]
    elif kind == "initializer_values":
        t = rng.choice(list(g.initializer))
        arr = onnx.numpy_helper.to_array(t).copy()
        if arr.size and arr.dtype.kind == "f":
            flat = arr.reshape(-1)
            flat[rng.randrange(flat.size)] = rng.choice([np.nan, np.inf, -np.inf, 3e38, 0.0])
            t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
    elif kind == "duplicate_node":
        n = rng.choice(nodes)
        g.node.insert(rng.randrange(len(nodes) + 1), n)
    elif kind == "domain":
        n = rng.choice(nodes)
        n.domain = rng.choice(["ai.ristretto", "com.microsoft", "bogus.domain", "ai.onnx.ml"])


def mutate(data: bytes, seed: int) -> tuple[str, bytes]:
    """One seeded mutation of the serialized model ``data``: ``(kind, mutated bytes)``."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    if kind == "bitflip":
        return kind, _bitflip(data, rng)
    if kind == "truncate":
        return kind, _truncate(data, rng)
    model = onnx.load_from_string(data)
    _edit(model, kind, rng)
    return kind, model.SerializeToString()
