"""Per-channel weight range rule ``output``: clip a channel's largest weights only when that
measurably lowers the layer's output error.

Per-output-channel fractional lengths (beyond the thesis's one per layer) chosen by a range rule
on each channel's histogram can clip a channel's largest weights: with a few hundred weights per
channel, the ``mse`` and ``percentile`` rules trade them for finer steps on estimates from a
handful of values, and per channel ends up *worse* than per tensor (docs/PER_CHANNEL.md,
ResNets at 6 bits). Here each channel starts from eq. 5.2 on its own largest weight (nothing
clips; with power-of-two steps this grid refines the per-tensor one, so every weight's error is
at most the per-tensor error) and moves to a finer, clipping length only when the expected
squared error of the channel's *output* drops by at least ``margin``:

    err_o(F) = sum_i (q_F(w_oi) - w_oi)^2 * E[x_i^2]

(the diagonal of ``E[(dw . x)^2]``), with ``E[x_i^2]`` the second moment of the input channel
that weight ``i`` reads, measured on the calibration data (ristretto_onnx.moments.input_moments).
Weights that read large inputs count more; their exact values are used, not histogram bins.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ristretto_onnx.formats import Fixed, PerChannel
from ristretto_onnx.range_rules import dfp_frac_bits

#: A clipping length must lower the channel's output error by this fraction to be chosen.
MARGIN = 0.05
#: Finer lengths tried beyond the no-clip one.
EXTRA_BITS = 4


def input_weights(layer, w: np.ndarray, x2: np.ndarray, group: int = 1) -> np.ndarray:
    """E[x^2] of the input each weight multiplies, shaped ``(out channels, -1)``."""
    axis = layer.out_channel_axis
    moved = np.moveaxis(w, axis, 0)
    o = moved.shape[0]
    if layer.op_type == "Conv":  # (O, C/g, kh, kw): input channel g(o) * C/g + j
        cg = moved.shape[1]
        per_in = np.asarray(x2).reshape(group, cg)[np.arange(o) // (o // group)]  # (O, C/g)
        return np.repeat(per_in, moved[0, 0].size, axis=1)
    # fully connected: the input axis is the other axis of a 2-D weight
    return np.broadcast_to(np.asarray(x2)[None, :], (o, moved.shape[1]))


def output_error_format(layer, w: np.ndarray, bits: int, x2: np.ndarray, group: int = 1,
                        margin: float = MARGIN) -> PerChannel:
    """The per-channel dynamic fixed point format of ``w`` under the ``output`` rule."""
    axis = layer.out_channel_axis
    flat = np.moveaxis(np.asarray(w, np.float64), axis, 0).reshape(np.asarray(w).shape[axis], -1)
    s = input_weights(layer, np.asarray(w), x2, group).reshape(flat.shape)
    chans = []
    for row, sw in zip(flat, s):
        f0 = dfp_frac_bits(float(np.abs(row).max()), bits)
        cands = [f for f in range(f0, f0 + EXTRA_BITS + 1) if f <= 126]
        errs = [float((np.square(Fixed(bits, f).quantize(row).astype(np.float64) - row) * sw).sum()) for f in cands]
        best = int(np.argmin(errs))
        chans.append(Fixed(bits, cands[best] if errs[best] < (1.0 - margin) * errs[0] else f0))
    return PerChannel(tuple(chans), axis)


def output_rule_plan(model, layers, plan: Mapping[str, object], data, *, batch_size: int = 64,
                     threads: int | None = None, moments: Mapping | None = None) -> dict:
    """``plan`` with every per-channel fixed point weights format re-chosen by the ``output``
    rule, the input moments measured on ``data`` in the FP32 ``model`` (``moments``: measured
    already, moments.input_moments)."""
    from ristretto_onnx.moments import input_moments
    from ristretto_onnx.passes.graph import constant_value, import_graph, producer

    layers = [l for l in layers if isinstance(plan.get(f"{l.name}/weights"), PerChannel)]
    if not layers:
        return dict(plan)
    tensors = import_graph(model).tensors()
    weights = {l.name: constant_value(tensors[l.weight]) if l.weight in tensors else None for l in layers}
    groups = {}
    for l in layers:
        node = producer(tensors[l.node_output]) if l.node_output in tensors else None
        groups[l.name] = int(node.attrs.get("group", 1)) if node is not None else 1
    if moments is None:
        moments = input_moments(model, layers, data, batch_size=batch_size, threads=threads)
    return apply_output_rule(plan, layers, weights, moments, groups)


def apply_output_rule(plan: Mapping[str, object], layers, weights: Mapping[str, np.ndarray],
                      moments: Mapping[str, tuple[np.ndarray, np.ndarray]], groups: Mapping[str, int]) -> dict:
    """``plan`` with every per-channel fixed point weights format re-chosen by the rule."""
    out = dict(plan)
    for layer in layers:
        gid = f"{layer.name}/weights"
        fmt = plan.get(gid)
        if not isinstance(fmt, PerChannel) or not isinstance(fmt.formats[0], Fixed) or layer.name not in moments:
            continue
        if layer.op_type not in ("Conv", "Gemm", "MatMul") or weights.get(layer.name) is None:
            continue
        if layer.op_type != "Conv" and np.asarray(weights[layer.name]).ndim != 2:
            continue
        chosen = output_error_format(layer, weights[layer.name], fmt.bits, moments[layer.name][1],
                                     groups.get(layer.name, 1))
        out[gid] = PerChannel(chosen.formats, fmt.axis)
    return out
