"""Per-tensor or per-channel weights, chosen layer by layer (``--weight-granularity auto``).

The thesis gives every layer's weights one fractional length (one shift per layer, ch. 5); an
accelerator applies one shift per output channel just as cheaply, so the choice between the two
costs nothing in hardware and can be made per layer. Per channel pays where the channels' ranges
differ by orders of magnitude (depthwise convolutions: with one length per layer, small channels
round to zero), and can lose where a layer's channels are alike and a few hundred weights per
channel give a worse range estimate than the whole tensor (docs/PER_CHANNEL.md, ResNets at
6 bits). So each layer's weights take per-channel formats only when that lowers the expected
squared error of the layer's output channels, each relative to the channel's own signal, on the
calibration data by at least ``margin``:

    err(format) = sum_o [sum_i (q(w_oi) - w_oi)^2 E[x_i^2]] / [sum_i w_oi^2 E[x_i^2]]

(the diagonals of ``E[(dW x)^2]`` and ``E[(W x)^2]``, as the per-channel ``output`` rule of
:mod:`ristretto_onnx.channel_rule` uses per channel), per tensor with the scheme's rule and per
channel with the ``output`` rule (dynamic fixed point) or the scheme's per-channel rule (pow2).
Each channel counts by its noise-to-signal ratio, not its absolute error: a channel of small
weights is as important as a large one to the layers after it (batch normalization was folded
into the weights, and the next layer's weights may scale it up again), and an absolute error
would let per tensor round it to zero unnoticed. Otherwise the layer keeps the thesis's one
format per tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ristretto_onnx.channel_rule import input_weights, output_error_format
from ristretto_onnx.formats import Fixed, Format, PerChannel
from ristretto_onnx.schemes import Scheme
from ristretto_onnx.stats import GroupRange

#: Per channel must lower a layer's expected output error by this fraction to be chosen.
MARGIN = 0.05


@dataclass(frozen=True)
class LayerWeights:
    """What the choice knows of one layer: its float weights and its input's E[x^2] per channel."""

    layer: object  # passes.layers.Layer
    weights: np.ndarray
    x2: np.ndarray
    group: int = 1  # Conv's ``group`` attribute

    def output_error(self, fmt: Format) -> float:
        """Expected output noise-to-signal of ``fmt`` on these weights, summed over the output
        channels (module docstring)."""
        w = np.asarray(self.weights)
        axis = self.layer.out_channel_axis
        flat = np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)
        s = input_weights(self.layer, w, self.x2, self.group).reshape(flat.shape)
        if isinstance(fmt, PerChannel):
            q = np.stack([f.quantize(row).astype(np.float64) for f, row in zip(fmt.formats, flat)])
        else:
            q = np.asarray(fmt.quantize(flat), np.float64)
        signal = (np.square(flat) * s).sum(axis=1)
        noise = (np.square(q - flat) * s).sum(axis=1)
        live = signal > 0
        return float((noise[live] / signal[live]).sum())


def measure_layer_weights(model, layers: Iterable, data, *, batch_size: int = 64,
                          threads: int | None = None) -> dict[str, LayerWeights]:
    """``{weights group id: LayerWeights}`` of the layers whose weights have one output-channel
    axis, E[x^2] measured on ``data`` in the FP32 ``model`` (one streamed pass); without data
    every input counts alike (E[x^2] = 1: the weights' own squared error)."""
    from onnx import helper

    from ristretto_onnx.moments import input_moments
    from ristretto_onnx.passes.graph import constant_lookup

    layers = [l for l in layers if l.op_type in ("Conv", "Gemm", "MatMul") and l.out_channel_axis is not None]
    value = constant_lookup(model)
    nodes = {n.output[0]: n for n in model.graph.node if n.output}
    out: dict[str, LayerWeights] = {}
    moments = input_moments(model, layers, data, batch_size=batch_size, threads=threads) \
        if layers and data is not None else {}
    for l in layers:
        w = value(l.weight)
        if w is None or (data is not None and l.name not in moments) or (l.op_type != "Conv" and np.ndim(w) != 2):
            continue
        node = nodes.get(l.node_output)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute} if node is not None else {}
        group = int(attrs.get("group", 1))
        w = np.asarray(w)
        inputs = w.shape[1] * group if l.op_type == "Conv" else np.moveaxis(w, l.out_channel_axis, 0).shape[1]
        x2 = np.asarray(moments[l.name][1]) if data is not None else np.ones(inputs)
        out[f"{l.name}/weights"] = LayerWeights(l, w, x2, group)
    return out


@dataclass(frozen=True)
class Choice:
    """One layer's decision at one width: both errors and whether per channel won."""

    group: str
    bits: int
    error_tensor: float
    error_channel: float
    per_channel: bool


@dataclass(frozen=True)
class LayerwiseGranularity(Scheme):
    """A scheme whose weights are per tensor or per channel layer by layer (module docstring).

    ``tensor`` and ``channel`` are the same scheme with one and the other weight granularity;
    activations and every other group come from ``tensor``. Decisions are cached per (group,
    width) in ``choices`` (the search asks for the same widths many times).
    """

    tensor: Scheme | None = None
    channel: Scheme | None = None
    evidence: Mapping[str, LayerWeights] = field(default_factory=dict, compare=False, repr=False)
    margin: float = MARGIN
    choices: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, tensor: Scheme, channel: Scheme, evidence: Mapping[str, LayerWeights],
           margin: float = MARGIN) -> LayerwiseGranularity:
        return cls(name=tensor.name, categories=tensor.categories, min_bits=tensor.min_bits,
                   max_bits=tensor.max_bits, tensor=tensor, channel=channel, evidence=dict(evidence), margin=margin)

    def variants(self, groups, bits):
        return self.tensor.variants(groups, bits)

    def describe(self, variant):
        return self.tensor.describe(variant)

    def formats(self, groups: Sequence[GroupRange], bits: int, variant: int | None = None) -> dict[str, Format]:
        out = self.tensor.formats(groups, bits, variant)
        weights = [g for g in groups if g.role == "weights" and g.group in self.evidence]
        if not weights:
            return out
        per_channel = self.channel.formats(weights, bits, variant)
        for g in weights:
            out[g.group] = self._choose(g.group, bits, out[g.group], per_channel.get(g.group))
        return out

    def _choose(self, gid: str, bits: int, fmt_t: Format, fmt_c: Format | None) -> Format:
        if not isinstance(fmt_c, PerChannel):
            return fmt_t
        key = (gid, bits, str(fmt_t), str(fmt_c))
        if key not in self.choices:
            ev = self.evidence[gid]
            if isinstance(fmt_c.formats[0], Fixed):  # dfp: the output rule per channel
                fmt_c = PerChannel(output_error_format(ev.layer, ev.weights, bits, ev.x2, ev.group).formats,
                                   fmt_c.axis)
            e_t, e_c = ev.output_error(fmt_t), ev.output_error(fmt_c)
            win = e_c < (1.0 - self.margin) * e_t
            self.choices[key] = (Choice(gid, bits, e_t, e_c, win), fmt_c if win else fmt_t)
        return self.choices[key][1]

    def decisions(self) -> list[Choice]:
        return [c for c, _ in self.choices.values()]


def choose_plan(tensor_plan: Mapping[str, Format | None], channel_plan: Mapping[str, Format | None],
                evidence: Mapping[str, LayerWeights], margin: float = MARGIN) -> tuple[dict, list[Choice]]:
    """``tensor_plan`` with each layer's weights replaced by ``channel_plan``'s where that lowers
    the expected output error by ``margin`` (``quantize``: the plans are already made)."""
    scheme = LayerwiseGranularity(evidence=dict(evidence), margin=margin)
    out = dict(tensor_plan)
    for gid in evidence:
        fmt_t = tensor_plan.get(gid)
        if fmt_t is None:
            continue
        out[gid] = scheme._choose(gid, fmt_t.bits, fmt_t, channel_plan.get(gid))
    return out, scheme.decisions()
