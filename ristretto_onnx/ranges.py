"""Range statistics per group: the input of every format rule (thesis 4.3, 5.2.1, 6.3.1).

Weights and biases are measured directly on their constant values; layer inputs and outputs on
calibration data, all tensors in one pass (:func:`~ristretto_onnx.runtime.calibrate.calibrate`).
A tensor shared by several groups (one layer's output is the next one's input) is measured once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

import numpy as np
from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.graph import constant_lookup
from ristretto_onnx.passes.layers import ACTIVATION_ROLES, Layer
from ristretto_onnx.runtime.calibrate import RangeStats, calibrate


def parameter_ranges(model: ModelProto, layers: Iterable[Layer]) -> dict[str, RangeStats]:
    """Ranges of the ``weights`` and ``bias`` groups, from the constants (no data needed)."""
    constant = constant_lookup(model)
    out: dict[str, RangeStats] = {}
    for layer in layers:
        for g in layer.groups:
            if g.role in ACTIVATION_ROLES:
                continue
            value = constant(g.tensor)
            if value is None:
                raise RistrettoError(f"{g.id}: {g.tensor!r} is not a constant of this model")
            out[g.id] = RangeStats.of(value)
    return out


def activation_ranges(model: ModelProto, layers: Iterable[Layer], data, *, batch_size: int = 64,
                      threads: int | None = None, measure: Mapping[str, str] | None = None
                      ) -> dict[str, RangeStats]:
    """Ranges of the ``inputs`` and ``outputs`` groups over ``data``, in one streamed pass.

    ``measure`` maps group ids to another tensor whose values stand for the group's, e.g. the
    output of the Clip that bounds a layer output (:mod:`~ristretto_onnx.passes.analysis.clip_bounds`).
    """
    measure = measure or {}
    groups = [g for layer in layers for g in layer.groups if g.role in ACTIVATION_ROLES]
    tensor = {g.id: measure.get(g.id, g.tensor) for g in groups}
    by_tensor = calibrate(model, list(dict.fromkeys(tensor.values())), data, batch_size=batch_size,
                          threads=threads)
    return {g.id: by_tensor[tensor[g.id]] for g in groups}


def group_ranges(model: ModelProto, layers: Iterable[Layer], data=None, *, batch_size: int = 64,
                 threads: int | None = None, measure: Mapping[str, str] | None = None
                 ) -> dict[str, RangeStats]:
    """Ranges of every group of ``layers``: parameters always, activations when ``data`` is given."""
    layers = list(layers)
    out = parameter_ranges(model, layers)
    if data is not None:
        out.update(activation_ranges(model, layers, data, batch_size=batch_size, threads=threads,
                                     measure=measure))
    return out


def channel_ranges(model: ModelProto, layers: Iterable[Layer]) -> dict[str, tuple[int, tuple[RangeStats, ...]]]:
    """``{weights group id: (output-channel axis, one RangeStats per output channel)}``.

    Per-output-channel weight formats (beyond the thesis) choose one fractional length or
    exponent window per channel from these. Layers without a single output-channel axis
    (``Layer.out_channel_axis`` is None, e.g. grouped ConvTranspose) are left out: their weights
    stay per tensor.
    """
    constant = constant_lookup(model)
    out: dict[str, tuple[int, tuple[RangeStats, ...]]] = {}
    for layer in layers:
        axis = layer.out_channel_axis
        w = constant(layer.weight)
        if axis is None or w is None or w.ndim < 1:
            continue
        moved = np.moveaxis(np.asarray(w, np.float32), axis, 0).reshape(w.shape[axis], -1)
        out[f"{layer.name}/weights"] = (axis, tuple(RangeStats.of(row) for row in moved))
    return out


T = TypeVar("T")


def tie_ranges(ranges: Mapping[str, T], ties: Mapping[str, tuple[str, ...]]) -> dict[str, T]:
    """``ranges`` with every tied group given the range of the widest member of its tie.

    ``ties`` comes from :func:`~ristretto_onnx.passes.analysis.concat_ties.concat_ties`: layer outputs
    written into one Concat buffer share one format, the one that saturates none of them. Any
    range rule then gives all members the same fractional length. Values need ``max_abs``.
    """
    out = dict(ranges)
    for gid, members in ties.items():
        present = [m for m in members if m in ranges]
        if gid in ranges and present:
            out[gid] = ranges[max(present, key=lambda m: ranges[m].max_abs)]
    return out
