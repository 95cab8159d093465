"""Range statistics per group: the input of every format rule (thesis 4.3, 5.2.1, 6.3.1).

Weights and biases are measured directly on their constant values; layer inputs and outputs on
calibration data, all tensors in one pass (:func:`~ristretto_onnx.runtime.calibrate.calibrate`).
A tensor shared by several groups (one layer's output is the next one's input) is measured once.
"""

from __future__ import annotations

from collections.abc import Iterable

from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.graph_index import GraphIndex
from ristretto_onnx.passes.layers import ACTIVATION_ROLES, Layer
from ristretto_onnx.runtime.calibrate import RangeStats, calibrate


def parameter_ranges(model: ModelProto, layers: Iterable[Layer]) -> dict[str, RangeStats]:
    """Ranges of the ``weights`` and ``bias`` groups, from the constants (no data needed)."""
    index = GraphIndex(model.graph)
    out: dict[str, RangeStats] = {}
    for layer in layers:
        for g in layer.groups:
            if g.role in ACTIVATION_ROLES:
                continue
            value = index.constant_value(g.tensor)
            if value is None:
                raise RistrettoError(f"{g.id}: {g.tensor!r} is not a constant of this model")
            out[g.id] = RangeStats.of(value)
    return out


def activation_ranges(model: ModelProto, layers: Iterable[Layer], data, *, batch_size: int = 64,
                      threads: int | None = None) -> dict[str, RangeStats]:
    """Ranges of the ``inputs`` and ``outputs`` groups over ``data``, in one streamed pass."""
    groups = [g for layer in layers for g in layer.groups if g.role in ACTIVATION_ROLES]
    by_tensor = calibrate(model, [g.tensor for g in groups], data, batch_size=batch_size,
                          threads=threads)
    return {g.id: by_tensor[g.tensor] for g in groups}


def group_ranges(model: ModelProto, layers: Iterable[Layer], data=None, *, batch_size: int = 64,
                 threads: int | None = None) -> dict[str, RangeStats]:
    """Ranges of every group of ``layers``: parameters always, activations when ``data`` is given."""
    layers = list(layers)
    out = parameter_ranges(model, layers)
    if data is not None:
        out.update(activation_ranges(model, layers, data, batch_size=batch_size, threads=threads))
    return out
