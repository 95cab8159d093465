"""Per-channel statistics of tensors on calibration data (one streamed pass per call).

Bias correction (passes.bias_correction) needs ``E[x]`` and the per-channel ``output`` rule
(ristretto_onnx.channel_rule) ``E[x^2]`` of each layer's input, per input channel; the outputs
bias correction (ristretto_onnx.output_bias) the mean of layer outputs in the FP32 and the
simulated model; data-aware equalization (passes.equalize) each link channel's largest |x|.
All go through :func:`channel_stats`: the graph cut at the tensors asked for (onnxruntime runs
every node whatever is fetched), one session, the batches streamed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, TensorProto, helper

from ristretto_onnx.passes.graph import nodes_computing, runtime_inputs
from ristretto_onnx.passes.layers import Layer
from ristretto_onnx.runtime.calibrate import session_any_size


@dataclass
class ChannelStats:
    """Sums over every element of one channel: ``count`` elements, their sum, sum of squares and
    largest magnitude (float64; the last two ``None`` where only means were asked for)."""
    total: np.ndarray
    squares: np.ndarray | None
    peak: np.ndarray | None
    count: int

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count


def truncated(model: ModelProto, outputs: list[str]) -> ModelProto:
    """A copy of ``model`` with only the nodes ``outputs`` need, and those as its outputs."""
    keep = nodes_computing(model, outputs)
    out = ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    del out.graph.output[:]
    out.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in outputs)
    return out


def channel_stats(model: ModelProto, tensors: Mapping[str, tuple[str, int]], batches: Iterable[np.ndarray], *,
                  threads: int | None = None, means_only: bool = False) -> dict[str, ChannelStats]:
    """``{key: ChannelStats}`` of ``tensors[key] = (tensor name, channel axis)`` in ``model``
    over the input ``batches`` (a tensor may be the graph's input itself); ``means_only``: no
    squares or peaks (the same sums, in less time)."""
    out: dict[str, ChannelStats] = {}
    for values in fetched(model, [t for t, _ in tensors.values()], batches, threads=threads):
        for key, (t, axis) in tensors.items():
            accumulate(out, key, values[t], axis, means_only=means_only)
    return out


def fetched(model: ModelProto, names: Iterable[str], batches: Iterable[np.ndarray], *,
            threads: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """``{name: value}`` of the tensors ``names`` in ``model`` for each input batch, from one
    session of the graph cut at them (a name may be the graph's input itself)."""
    feed = runtime_inputs(model)[0]
    fetch = list(dict.fromkeys(t for t in names if t != feed))
    session = session_any_size(truncated(model, fetch), threads=threads) if fetch else None
    for x in batches:
        x = np.ascontiguousarray(x, np.float32)
        values = dict(zip(fetch, session.run(fetch, {feed: x}))) if session is not None else {}
        values[feed] = x
        yield values


def accumulate(stats: dict[str, ChannelStats], key: str, value: np.ndarray, axis: int, *,
               means_only: bool = False) -> None:
    """Add one batch's ``value`` (channels on ``axis``) to ``stats[key]`` (float64 sums)."""
    v = np.asarray(value, np.float64)
    ax = axis % v.ndim
    others = tuple(d for d in range(v.ndim) if d != ax)
    s = ChannelStats(v.sum(axis=others), None if means_only else np.square(v).sum(axis=others),
                     None if means_only else np.abs(v).max(axis=others), v.size // v.shape[ax])
    if key in stats:
        o = stats[key]
        s = ChannelStats(o.total + s.total, None if means_only else o.squares + s.squares,
                         None if means_only else np.maximum(o.peak, s.peak), o.count + s.count)
    stats[key] = s


def input_means(model: ModelProto, layers: Iterable[Layer], data, *, batch_size: int = 64,
                threads: int | None = None) -> dict[str, np.ndarray]:
    """``{layer name: per-channel mean of its input}`` over ``data`` in the FP32 ``model``
    (channel axis 1 for convolutions, the last axis for fully connected layers)."""
    return {k: m for k, (m, _) in input_moments(model, layers, data, batch_size=batch_size, threads=threads,
                                                means_only=True).items()}


def input_moments(model: ModelProto, layers: Iterable[Layer], data, *, batch_size: int = 64,
                  threads: int | None = None, means_only: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{layer name: (E[x], E[x^2]) per input channel}``, as :func:`input_means` (``means_only``:
    E[x^2] is ``None``)."""
    layers = [l for l in layers if l.op_type in ("Conv", "Gemm", "MatMul")]
    tensors = {l.input: (l.input, 1 if l.kind == "conv" else -1) for l in layers}
    stats = channel_stats(model, tensors, (x for x, _ in data.batches(batch_size)), threads=threads,
                          means_only=means_only)
    return {l.name: (stats[l.input].mean, None if means_only else stats[l.input].squares / stats[l.input].count)
            for l in layers if l.input in stats}
