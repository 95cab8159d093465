"""Layer outputs that a Clip bounds, such as ReLU6 (read-only analysis).

MobileNets follow every convolution with ``Clip(0, 6)``. The output quantizer sits before the
Clip, so values beyond the Clip's bounds may saturate at no cost, while the values up to the
bound are common, not rare outliers. Two things follow for the range step:

* the range that matters is the one of the *clipped* values: calibrate the Clip's output
  (at most ``max(|lo|, |hi|)``) rather than the raw layer output;
* the thesis's "layer outputs get one integer bit fewer" (saturate the rare largest outputs)
  must not apply: with ReLU6 it would saturate every value in (4, 6], turning ReLU6 into ReLU4.

A Clip counts when it is the sole reader of the layer output and its bounds are constants. So
does the per-channel ReLU6 that cross-layer equalization writes (passes.equalize): a Relu read
only by ``Min(., hi)`` with a constant ``hi >= 0`` per channel, bounded by the largest ``hi``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto

from ristretto_onnx.passes.graph import as_graph, constant_value, is_op, sole_readers
from ristretto_onnx.passes.layers import Layer, group_id


@dataclass(frozen=True)
class ClipBound:
    """The Clip after a layer output: the tensor it writes and its bounds (None = unbounded)."""

    tensor: str
    lo: float | None
    hi: float | None

    @property
    def max_abs(self) -> float:
        return max(abs(v) for v in (self.lo, self.hi) if v is not None)


def clip_bounds(model: ModelProto | gs.Graph, layers: Iterable[Layer]) -> dict[str, ClipBound]:
    """``{outputs group id: ClipBound}`` for each layer output read only by a bounded Clip."""
    sole = sole_readers(as_graph(model))
    out: dict[str, ClipBound] = {}
    for layer in layers:
        node = sole.get(layer.output)
        if node is not None and is_op(node, "Relu"):
            hi = _per_channel_min(sole.get(node.outputs[0].name))
            if hi is not None:
                out[group_id(layer.name, "outputs")] = ClipBound(sole[node.outputs[0].name].outputs[0].name, 0.0, hi)
            continue
        if node is None or not is_op(node, "Clip"):
            continue
        bound = _bounds(node)
        if bound is not None and (bound[0] is not None or bound[1] is not None):
            out[group_id(layer.name, "outputs")] = ClipBound(node.outputs[0].name, *bound)
    return out


def _per_channel_min(node: gs.Node | None) -> float | None:
    """The largest bound of ``Min(x, hi)`` with a constant, non-negative ``hi``; else None."""
    if node is None or not is_op(node, "Min") or len(node.inputs) != 2:
        return None
    hi = constant_value(node.inputs[1])
    if hi is None or hi.size == 0 or np.any(hi < 0):
        return None
    return float(np.max(hi))


def _bounds(node: gs.Node) -> tuple[float | None, float | None] | None:
    """(lo, hi) of a Clip from its constant inputs (opset >= 11, the oldest we load); None if
    a bound is computed at run time."""
    values: list[float | None] = []
    for i in (1, 2):
        tensor = node.inputs[i] if len(node.inputs) > i else None
        if tensor is None or not tensor.name:
            values.append(None)
            continue
        v = constant_value(tensor)
        if v is None or v.size != 1:
            return None
        values.append(float(np.asarray(v).ravel()[0]))
    return values[0], values[1]
