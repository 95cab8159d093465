"""Per-channel moments of layer inputs on calibration data (FP32 model, one streamed pass).

Bias correction (passes.bias_correction) needs ``E[x]`` and the per-channel ``output`` rule
(ristretto_onnx.channel_rule) ``E[x^2]`` of each layer's input, per input channel.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from onnx import ModelProto, TensorProto, helper

from ristretto_onnx.passes.graph import runtime_inputs
from ristretto_onnx.passes.layers import Layer
from ristretto_onnx.runtime.calibrate import session_any_size


def input_means(model: ModelProto, layers: Iterable[Layer], data, *, batch_size: int = 64,
                threads: int | None = None) -> dict[str, np.ndarray]:
    """``{layer name: per-channel mean of its input}`` over ``data`` in the FP32 ``model``
    (channel axis 1 for convolutions, the last axis for fully connected layers)."""
    return {k: m for k, (m, _) in input_moments(model, layers, data, batch_size=batch_size,
                                                threads=threads).items()}


def input_moments(model: ModelProto, layers: Iterable[Layer], data, *, batch_size: int = 64,
                  threads: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{layer name: (E[x], E[x^2]) per input channel}``, as :func:`input_means`."""
    layers = [l for l in layers if l.op_type in ("Conv", "Gemm", "MatMul")]
    probe = ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    graph_inputs = runtime_inputs(probe)
    for t in dict.fromkeys(l.input for l in layers):
        if t not in outputs and t not in graph_inputs:
            probe.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    fetch = list(dict.fromkeys(l.input for l in layers if l.input not in graph_inputs))
    session = session_any_size(probe, threads=threads)
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    axis = {l.input: (1 if l.kind == "conv" else -1) for l in layers}
    for x, _ in data.batches(batch_size):
        x = np.ascontiguousarray(x, np.float32)
        values = dict(zip(fetch, session.run(fetch, {graph_inputs[0]: x}) if fetch else []))
        values.update({name: x for name in graph_inputs if name in axis})
        for name, v in values.items():
            v = np.asarray(v, np.float32)
            ax = axis[name] % v.ndim
            others = tuple(d for d in range(v.ndim) if d != ax)
            sums[name] = sums.get(name, 0.0) + v.sum(axis=others, dtype=np.float64)
            squares[name] = squares.get(name, 0.0) + np.square(v).sum(axis=others, dtype=np.float64)
            counts[name] = counts.get(name, 0) + v.size // v.shape[ax]
    return {l.name: (sums[l.input] / counts[l.input], squares[l.input] / counts[l.input])
            for l in layers if l.input in sums}
