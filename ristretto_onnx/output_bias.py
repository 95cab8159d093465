"""Bias correction measured at the layer outputs: each channel's mean error in the simulated model.

:mod:`ristretto_onnx.passes.bias_correction` cancels the part of a layer's expected output error
that its own weight rounding causes, ``(W_q - W) E[x]`` with ``E[x]`` from the FP32 model. At
4-6 bits a layer's output is also shifted by what arrives at its input: the rounded and clipped
layer outputs and inputs upstream (thesis 2.6, Figure 2.9: inputs, weights and outputs are all
quantized), whose errors do not average to zero (clipping removes only large values, a ReLU
after a rounded output passes only the positive part of the noise). Here the expected error
is measured where it lands: ``E[z_q] - E[z]`` per output channel of each layer's output before
its quantizer (the accumulator plus bias, thesis Figure 2.9), ``z_q`` in the simulated model on
the calibration images and ``z`` in the FP32 model on the same images, and taken off the bias,
which lives in the accumulator and costs nothing in hardware (Nagel et al. 2019, "Data-free
quantization", sec. 4.2, the empirical form, there for the weights' share only).

A correction upstream changes what downstream layers see, so the layers are corrected one
after the other in graph order, each measured with the ones before it corrected (one pass
over the data per layer). Calibration images only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
from onnx import ModelProto

from ristretto_onnx.moments import channel_stats
from ristretto_onnx.passes.graph import import_graph
from ristretto_onnx.passes.layers import Layer

#: Layers whose output error this corrects (their bias is a per-output-channel constant).
CORRECTED = ("Conv", "Gemm", "MatMul")


def _channel_axis(layer: Layer) -> int:
    return 1 if layer.kind == "conv" else -1


def simulated_outputs(model: ModelProto, layers: Iterable[Layer]) -> dict[str, str]:
    """``{layer name: tensor}``: each layer's output before its output quantizer in the
    simulated ``model`` (the MAC node's output, or the bias ``Add``'s after it)."""
    graph = import_graph(model)
    by_name = {n.name: n for n in graph.nodes if n.name}
    readers: dict[str, list] = {}
    for n in graph.nodes:
        for t in n.inputs:
            readers.setdefault(t.name, []).append(n)
    out: dict[str, str] = {}
    for layer in layers:
        node = by_name.get(layer.node)
        if node is None or node.op != layer.op_type or layer.op_type not in CORRECTED:
            continue
        tensor = node.outputs[0].name
        if layer.bias_node_output is not None:
            adds = [n for n in readers.get(tensor, []) if n.op == "Add"]
            if len(adds) != 1:
                continue
            tensor = adds[0].outputs[0].name
        out[layer.name] = tensor
    return out


def channel_means(model: ModelProto, tensors: Mapping[str, str], axes: Mapping[str, int],
                  batches: list[np.ndarray], threads: int | None = None) -> dict[str, np.ndarray]:
    """``{key: per-channel mean of tensors[key]}`` over ``batches`` in ``model`` (one pass)."""
    if not tensors:
        return {}
    stats = channel_stats(model, {k: (t, axes[k]) for k, t in tensors.items()}, batches, threads=threads)
    return {k: s.mean for k, s in stats.items()}


def output_error_deltas(float_model: ModelProto, layers: Iterable[Layer],
                        simulate_with: Callable[[Mapping[str, np.ndarray]], ModelProto],
                        batches: list[np.ndarray], *, start: Mapping[str, np.ndarray] | None = None,
                        threads: int | None = None) -> dict[str, np.ndarray]:
    """``{layer name: delta}`` to take off each layer's bias (passes.bias_correction's
    ``deltas``), layer after layer in graph order: each layer's mean output error
    ``E[z_q] - E[z]`` is measured in the model ``simulate_with(deltas)`` builds with the layers
    before it already corrected (all at once would correct an upstream error twice: once where
    it arises and again downstream). ``start``: deltas to begin from."""
    layers = [l for l in layers if l.op_type in CORRECTED]
    if not layers:
        return dict(start or {})
    axes = {l.name: _channel_axis(l) for l in layers}
    reference = channel_means(float_model, {l.name: l.output for l in layers}, axes, batches, threads)
    deltas = {k: np.asarray(v, np.float64) for k, v in (start or {}).items()}
    for layer in layers:
        if layer.name not in reference:
            continue
        model = simulate_with(deltas)
        tensor = simulated_outputs(model, [layer]).get(layer.name)
        if tensor is None:
            continue
        mean = channel_means(model, {layer.name: tensor}, axes, batches, threads)[layer.name]
        if mean.shape == reference[layer.name].shape:
            deltas[layer.name] = deltas.get(layer.name, 0.0) + (mean - reference[layer.name])
    return deltas


def divergence(reference: np.ndarray, outputs: np.ndarray, *, logits: bool = True) -> float:
    """How far ``outputs`` are from the FP32 ``reference`` (one row per image): the mean
    Kullback-Leibler divergence of their softmax for a classifier's ``logits`` (more than one
    column; what decides top-1, as in ristretto_onnx.refine), else the mean squared difference."""
    reference, outputs = np.asarray(reference, np.float64), np.asarray(outputs, np.float64)
    if not logits or reference.ndim != 2 or reference.shape[1] < 2:
        return float(np.mean(np.square(outputs - reference)))

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(reference), log_softmax(outputs)
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())
