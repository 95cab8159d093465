"""The scalar parameters of a lowered graph (scales and clip bounds of fixed-point quantizers).

With ``parametric=True`` they become graph inputs fed at every run, so plans that differ only in
fixed-point activation formats share one onnxruntime session; otherwise they become constants
that onnxruntime folds into the convolutions. Rewrite rules read their values while matching
(is this scale a power of two? are these bounds integers?), so the values live here, on the
side of the graph, until :meth:`Params.publish`.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

#: Prefix of the scalar graph inputs a parametric graph is fed with.
PARAM_PREFIX = "rsim::"


class Params:
    """Scalar parameters by tensor, plus the graph they belong to."""

    def __init__(self, graph: gs.Graph, parametric: bool) -> None:
        self.graph = graph
        self.parametric = parametric
        self.outputs = {t.name for t in graph.outputs}
        # id -> (tensor, value, dtype); the tensor is kept so that its id is never reused
        self._values: dict[int, tuple[gs.Variable, float, int]] = {}
        self._zero: gs.Constant | None = None
        self._n = 0

    def new(self, stem: str, value: float, dtype: int = TensorProto.FLOAT) -> gs.Variable:
        self._n += 1
        tensor = gs.Variable(f"{PARAM_PREFIX}{stem}#{self._n}")
        self._values[id(tensor)] = (tensor, float(value), dtype)
        return tensor

    def value(self, tensor: gs.Tensor) -> float | None:
        entry = self._values.get(id(tensor))
        return None if entry is None or entry[0] is not tensor else entry[1]

    def int8_zero(self) -> gs.Constant:
        if self._zero is None:
            self._zero = gs.Constant(f"{PARAM_PREFIX}zero_int8", np.array(0, np.int8))
        return self._zero

    def publish(self) -> dict[str, np.ndarray]:
        """Turn the parameters the graph still reads into inputs (parametric) or constants.

        Parametric names are given by position in the graph, so equal structures get equal
        names (and session keys) whatever rewrites happened; returns the feeds.
        """
        order: list[gs.Variable] = []
        seen: set[int] = set()
        for node in self.graph.nodes:
            for t in node.inputs:
                if id(t) in self._values and id(t) not in seen:
                    seen.add(id(t))
                    order.append(t)
        feeds: dict[str, np.ndarray] = {}
        for k, tensor in enumerate(order):
            _, value, dtype = self._values[id(tensor)]
            array = np.array(value, helper.tensor_dtype_to_np_dtype(dtype))
            if self.parametric:
                tensor.name = f"{PARAM_PREFIX}{k}"
                tensor.dtype, tensor.shape = array.dtype, []
                self.graph.inputs.append(tensor)
                feeds[tensor.name] = array
            else:
                tensor.to_constant(array)
        return feeds
