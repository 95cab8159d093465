"""What a constant tensor of a graphsurgeon graph holds: its value, element type and shape.

A tensor is *constant* when its value is fixed once the model is loaded: an initializer, a
``Constant`` node's output, or a shape-only or type-only op (``Transpose``, ``Cast``,
``Reshape`` ...) applied to constants, which is how exporters write shared or tied weights (the
weights the thesis's quantizers read, ch. 5). A runtime graph input is never constant. Every pass
and every analysis asks this one module; :mod:`ristretto_onnx.passes.graph` re-exports it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper
from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx

from ristretto_onnx.passes.external import is_external, tensor_array

DEFAULT_DOMAINS = ("", "ai.onnx")

#: Ops through which a constant stays constant and whose numpy evaluation is trivial.
_FOLDABLE_OPS = frozenset({"Constant", "Identity", "Transpose", "Cast", "Reshape", "Squeeze",
                           "Unsqueeze", "Flatten"})


def constant_value(tensor: gs.Tensor, memo: dict | None = None) -> np.ndarray | None:
    """The value of a constant tensor (see the module docstring), else ``None``.

    ``memo`` (one dict per graph) keeps values by tensor between calls; it holds the tensors too,
    so an id is never reused while its entry lives.
    """
    memo = {} if memo is None else memo
    hit = memo.get(id(tensor))
    if hit is not None and hit[0] is tensor:
        return hit[1]
    memo[id(tensor)] = (tensor, None)  # guards against cycles in malformed graphs
    value = _evaluate(tensor, memo)
    memo[id(tensor)] = (tensor, value)
    return value


def _evaluate(tensor: gs.Tensor, memo: dict) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        values = tensor._values
        if isinstance(values, gs.ir.tensor.LazyValues):  # read the proto without caching a copy
            return tensor_array(values.tensor)  # (or its file: weights left on disk, passes.external)
        return np.asarray(tensor.values)
    if not tensor.name or not tensor.inputs:
        return None
    node = tensor.inputs[0]
    if node.op not in _FOLDABLE_OPS or (node.domain or "") not in DEFAULT_DOMAINS:
        return None
    attrs = node.attrs
    if node.op == "Constant":
        return _constant_node_value(attrs)
    args = [constant_value(t, memo) if t.name else None for t in node.inputs]
    if not args or args[0] is None:
        return None
    x, op = args[0], node.op
    if op == "Identity":
        return x
    if op == "Cast":
        return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if op == "Flatten":
        axis = attrs.get("axis", 1) % max(x.ndim, 1) if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
    if op == "Reshape":
        if len(args) < 2 or args[1] is None:
            return None
        shape = [int(s) for s in args[1]]
        if not attrs.get("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape(shape)
    axes = attrs.get("axes")
    if axes is None and len(args) > 1:
        if node.inputs[1].name and args[1] is None:
            return None
        axes = None if args[1] is None else [int(a) for a in args[1]]
    if op == "Squeeze":
        return np.squeeze(x, axis=None if axes is None else tuple(axes))
    if axes is None:  # Unsqueeze
        return None
    out, rank = x, x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return out


def external_proto(tensor: gs.Tensor):
    """The TensorProto of a constant whose value is still on disk (passes.external), else None;
    large weights are read from it in chunks (:func:`~ristretto_onnx.passes.external.tensor_rows`)."""
    if isinstance(tensor, gs.Constant) and isinstance(tensor._values, gs.ir.tensor.LazyValues):
        proto = tensor._values.tensor
        if isinstance(proto, TensorProto) and is_external(proto):
            return proto
    return None


def _constant_node_value(attrs: dict) -> np.ndarray | None:
    if isinstance(attrs.get("value"), gs.Constant):
        return constant_value(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None  # sparse and string constants are never weights


def elem_type(tensor: gs.Tensor, memo: dict | None = None) -> int | None:
    """ONNX element type (``TensorProto.FLOAT`` ...) when known, else ``None``."""
    if isinstance(tensor, gs.Constant):
        values = tensor._values
        if isinstance(values, gs.ir.tensor.LazyValues):
            return values.tensor.data_type
        return helper.np_dtype_to_tensor_dtype(np.asarray(tensor.values).dtype)
    if tensor.dtype is not None:
        return dtype_to_onnx(tensor.dtype)
    hit = (memo or {}).get(id(tensor))
    value = hit[1] if hit is not None and hit[0] is tensor else None
    return None if value is None else helper.np_dtype_to_tensor_dtype(value.dtype)


def static_shape(tensor: gs.Tensor, memo: dict | None = None) -> tuple | None:
    """Static shape (ints, symbolic names or ``None`` per axis) when known."""
    if isinstance(tensor, gs.Constant):
        return tuple(tensor.shape)
    if tensor.shape is not None:
        return tuple(tensor.shape)
    value = constant_value(tensor, memo) if tensor.inputs else None
    return None if value is None else tuple(value.shape)
