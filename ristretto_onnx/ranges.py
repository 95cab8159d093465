"""The range stage: every group's range, the input of every format rule (thesis 4.3, 5.2.1, 6.3.1).

``compress``, ``quantize`` and ``analyze`` all measure ranges here, with :func:`measure_groups`.
Weights and biases are measured directly on their constant values; layer inputs and outputs on
calibration data, all tensors in one pass (:func:`~ristretto_onnx.runtime.calibrate.calibrate`).
A tensor shared by several groups (one layer's output is the next one's input) is measured once.

For choosing formats two facts of the graph shape the ranges (read-only analyses in
:mod:`ristretto_onnx.passes`): a layer output bounded by a Clip (ReLU6) is measured after the
Clip, and layer outputs written into one Concat buffer are tied to the widest of them, so every
rule gives them one format. ``analyze`` reports the raw ranges of the tensors instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

import numpy as np
from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.analysis.clip_bounds import clip_bounds
from ristretto_onnx.passes.analysis.concat_ties import concat_ties
from ristretto_onnx.passes.external import row_blocks
from ristretto_onnx.passes.graph import constant_lookup, external_proto, import_graph
from ristretto_onnx.passes.layers import ACTIVATION_ROLES, Layer
from ristretto_onnx.passes.nonnegative import relu_measure, unsigned_for
from ristretto_onnx.runtime.calibrate import calibrate
from ristretto_onnx.stats import GroupRange, RangeAccumulator, RangeStats


def parameter_ranges(model: ModelProto, layers: Iterable[Layer]) -> dict[str, RangeStats]:
    """Ranges of the ``weights`` and ``bias`` groups, from the constants (no data needed)."""
    graph = import_graph(model)
    constant, on_disk = constant_lookup(graph), _on_disk(graph)
    out: dict[str, RangeStats] = {}
    for layer in layers:
        for g in layer.groups:
            if g.role in ACTIVATION_ROLES:
                continue
            if g.tensor in on_disk:  # a weight left on disk: read in chunks (same statistics)
                acc = RangeAccumulator()
                for _, _, rows in row_blocks(on_disk[g.tensor]):
                    acc.update(rows)
                out[g.id] = acc.result()
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
    graph = import_graph(model)
    constant, on_disk = constant_lookup(graph), _on_disk(graph)
    out: dict[str, tuple[int, tuple[RangeStats, ...]]] = {}
    for layer in layers:
        axis = layer.out_channel_axis
        proto = on_disk.get(layer.weight)
        if proto is not None and axis == 0 and len(proto.dims) >= 1:  # rows read in chunks
            rows = [RangeStats.of(row) for start, stop, block in row_blocks(proto)
                    for row in block.astype(np.float32).reshape(stop - start, -1)]
            out[f"{layer.name}/weights"] = (axis, tuple(rows))
            continue
        w = constant(layer.weight)
        if axis is None or w is None or w.ndim < 1:
            continue
        moved = np.moveaxis(np.asarray(w, np.float32), axis, 0).reshape(w.shape[axis], -1)
        out[f"{layer.name}/weights"] = (axis, tuple(RangeStats.of(row) for row in moved))
    return out


def _on_disk(graph) -> dict:
    """``name -> TensorProto`` of the constants still on disk (passes.external)."""
    return {name: proto for name, t in graph.tensors().items() if (proto := external_proto(t)) is not None}


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


def measure_groups(model: ModelProto, layers: Iterable[Layer], data=None, *, batch_size: int = 64,
                   threads: int | None = None, for_formats: bool = True, unsigned: bool = False
                   ) -> list[GroupRange]:
    """Every group of ``layers`` as a :class:`GroupRange`, in layer order (the range stage).

    Parameters always (weights with their per-output-channel ranges), activations when ``data``
    is given. With ``for_formats`` bounded layer outputs are measured after their Clip and
    Concat ties share the widest range (see the module docstring); without, the ranges are
    those of the groups' own tensors. With ``unsigned`` (and ``for_formats``), activation groups
    that cannot be negative are marked (passes.nonnegative) and layer outputs read only by a
    ReLU are measured after it.
    """
    layers = list(layers)
    params = parameter_ranges(model, layers)
    bounds = clip_bounds(model, layers) if for_formats else {}
    uns = unsigned_for(model, layers, data) if unsigned and for_formats and data is not None else frozenset()
    measured: dict[str, RangeStats] = {}
    if data is not None:
        measure = {gid: t for gid, t in relu_measure(model, layers).items() if gid in uns}
        measure.update({gid: b.tensor for gid, b in bounds.items()})
        measured = activation_ranges(model, layers, data, batch_size=batch_size, threads=threads,
                                     measure=measure)
    acts = tie_ranges(measured, concat_ties(model, layers)) if for_formats else measured
    channels = channel_ranges(model, layers)
    images = max(len(data), 1) if data is not None else 1
    out: list[GroupRange] = []
    for layer in layers:
        for g in layer.groups:
            stats = params.get(g.id) or acts.get(g.id)
            if stats is None:
                continue
            ch, axis, ch_stats, size = None, None, None, stats.count
            if g.role == "weights":
                if g.id in channels:
                    axis, ch_stats = channels[g.id]
                    ch = tuple(float(c.max_abs) for c in ch_stats)
                size = int(np.prod(layer.weight_shape))
            elif g.role in ACTIVATION_ROLES:
                size = max(1, measured[g.id].count // images)  # values per image
            out.append(GroupRange(g.id, g.role, g.kind, float(stats.max_abs), ch, axis, size, stats, ch_stats,
                                  bounded=g.id in bounds, measured=params.get(g.id) or measured.get(g.id),
                                  unsigned=g.id in uns))
    return out
