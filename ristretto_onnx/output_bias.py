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
after the other in graph order, each measured with the ones before it corrected. The simulated
model is walked once, layer by layer (:class:`_Walk`): the tensors the rest of the network reads
are kept for every calibration image, so each layer's output is computed from the last layer's,
not from the images again (one pass over the network, each layer run twice: measured, then with
its correction; a pass per layer before). Calibration images only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
from onnx import ModelProto, ValueInfoProto, helper

from ristretto_onnx.moments import ChannelStats, accumulate, channel_stats
from ristretto_onnx.passes.graph import import_graph, nodes_computing, runtime_inputs, subgraph_inputs
from ristretto_onnx.runtime.calibrate import session_any_size
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
    stats = channel_stats(model, {k: (t, axes[k]) for k, t in tensors.items()}, batches, threads=threads,
                          means_only=True)
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
    model = simulate_with(deltas)
    tensors = simulated_outputs(model, layers)  # a correction changes bias values, not these names
    walk = _Walk(runtime_inputs(model)[0], batches, threads)
    for layer in layers:
        tensor = tensors.get(layer.name)
        if layer.name not in reference or tensor is None:
            continue
        mean = walk.mean(model, tensor, axes[layer.name])
        if mean.shape == reference[layer.name].shape:
            deltas[layer.name] = deltas.get(layer.name, 0.0) + (mean - reference[layer.name])
            model = simulate_with(deltas)
        walk.advance(model, tensor)
    return deltas


class _Walk:
    """The simulated model run layer by layer over the calibration ``batches``: the tensors
    computed so far that the rest of the graph reads (the frontier) are kept for every batch, and
    each step runs only the nodes between them and the next layer's output, in a session of
    those nodes (the graph cut at both ends). A step's values are those of the whole model cut at
    the layer's output: the same nodes on the same inputs (checked bit for bit in
    tests/core/test_output_bias.py). Memory: the frontier for every image (SqueezeNet at 256
    images: up to 0.8 GB, conv1's output); above :attr:`budget` bytes the walk stops keeping it
    and each later layer is measured from the images in the whole model cut at its output, a
    pass per layer (the same values, in more time)."""

    budget = 3 << 30

    def __init__(self, feed: str, batches: list[np.ndarray], threads: int | None) -> None:
        self.batches = [np.ascontiguousarray(x, np.float32) for x in batches]
        self.values: dict[str, list[np.ndarray]] | None = {feed: self.batches}
        self.done: set[str] = {feed}  # tensors computed (or fed)
        self.threads = threads

    def mean(self, model: ModelProto, tensor: str, axis: int) -> np.ndarray:
        """``tensor``'s mean per channel (on ``axis``) in ``model`` over the batches."""
        if self.values is None:
            return channel_means(model, {tensor: tensor}, {tensor: axis}, self.batches, self.threads)[tensor]
        stats: dict[str, ChannelStats] = {}
        values = self.values[tensor] if tensor in self.values else [v[0] for v in self._run(model, [tensor])]
        for value in values:
            accumulate(stats, tensor, value, axis, means_only=True)
        return stats[tensor].mean

    def advance(self, model: ModelProto, tensor: str) -> None:
        """Compute what ``tensor`` needs in ``model`` (the nodes :meth:`mean` ran, now with the
        layer's correction) and keep what the rest of the graph reads of it."""
        if self.values is None:
            return
        nodes = nodes_computing(model, [tensor], self.done)
        done = self.done | {o for n in nodes for o in n.output if o}
        read = {t for n in model.graph.node if not any(o in done for o in n.output)
                for t in list(n.input) + sorted(subgraph_inputs(n)) if t in done}
        fetch = sorted(read - self.values.keys())
        values = self._run(model, fetch) if fetch else []
        kept = {t: v for t, v in self.values.items() if t in read}
        kept.update({t: [v[i] for v in values] for i, t in enumerate(fetch)})
        self.values, self.done = kept, done
        if sum(a.nbytes for v in kept.values() for a in v) > self.budget:
            self.values = None  # from here on, from the images

    def _run(self, model: ModelProto, targets: list[str]) -> list[list[np.ndarray]]:
        segment = _segment(model, targets, self.values)
        session = session_any_size(segment, threads=self.threads)
        feeds = [i.name for i in segment.graph.input]
        return [session.run(targets, {t: self.values[t][b] for t in feeds}) for b in range(len(self.batches))]


def _segment(model: ModelProto, targets: list[str], values: Mapping[str, list[np.ndarray]]) -> ModelProto:
    """``model`` cut to the nodes that compute ``targets`` from the tensors in ``values`` (its
    inputs, typed and shaped as they are, any batch size) and the initializers."""
    nodes = nodes_computing(model, targets, values)
    read = {t for n in nodes for t in list(n.input) + sorted(subgraph_inputs(n)) if t}
    out = ModelProto(ir_version=model.ir_version, producer_name=model.producer_name, domain=model.domain,
                     model_version=model.model_version)
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    out.graph.name = model.graph.name
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(t for t in model.graph.initializer if t.name in read and t.name not in values)
    for t in sorted(read & values.keys()):
        v = values[t][0]
        shape = ["batch" if i == 0 else d for i, d in enumerate(v.shape)]
        out.graph.input.append(helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(v.dtype), shape))
    out.graph.output.extend(ValueInfoProto(name=t) for t in targets)  # types: onnxruntime infers them
    return out


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
