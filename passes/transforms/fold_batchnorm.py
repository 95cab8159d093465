"""Fold inference-mode BatchNormalization into the Conv that feeds it.

A hardware accelerator never runs a separate normalization after a convolution: the scale and
shift are folded into the kernels and the bias, and the *folded* weights are what get quantized.
So the simulated model must quantize ``W * gamma / sqrt(var + eps)``, not ``W``.

Per output channel ``c``, with ``s = gamma / sqrt(var + eps)``:
``W'[c] = W[c] * s[c]`` and ``b'[c] = (b[c] - mean[c]) * s[c] + beta[c]``, computed in float64 and
rounded once to float32.

A pair is folded only when the BN is the Conv output's sole consumer (otherwise the unnormalized
output is still needed), the Conv output is not a graph output, the BN is in inference mode and
all its parameters and the Conv's weights and bias are constants. Weights used by other nodes too
are not overwritten: the folded copy gets a new name.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto

from ristretto_onnx.passes.contract import PassResult, Transformation
from ristretto_onnx.passes.graph import (
    constant_value, export_model, import_graph, is_op, output_names, remove_node, sole_consumer,
    tensor_names, unique_name,
)


class FoldBatchNorm(Transformation):
    """Merge every foldable Conv -> BatchNormalization pair into the Conv."""

    name = "fold_batchnorm"

    def apply(self, graph: gs.Graph) -> PassResult:
        memo: dict = {}
        outputs = output_names(graph)
        folds = [(conv, bn) for conv in graph.nodes
                 if (bn := _foldable_bn(conv, memo, outputs)) is not None]
        if not folds:
            return PassResult(graph, False)
        taken = tensor_names(graph)
        # Which parameters only their Conv reads is decided on the graph before any fold.
        private = {id(t) for conv, _ in folds for t in conv.inputs[1:3] if _private(graph, conv, t, outputs)}
        for conv, bn in folds:
            w, b = _folded_params(conv, bn, memo)
            w_name = conv.inputs[1].name
            has_bias = len(conv.inputs) > 2 and conv.inputs[2].name
            bias_stem = conv.inputs[2].name if has_bias else f"{w_name}_bias"
            _set_param(conv, 1, w, taken, f"{w_name}_bnfold", private)
            if len(conv.inputs) < 3:
                conv.inputs.append(gs.Variable.empty())
            _set_param(conv, 2, b, taken, f"{bias_stem}_bnfold", private)
            y = bn.outputs[0]
            remove_node(graph, bn)
            conv.outputs[0] = y
        return PassResult(graph, True)


def fold_batchnorm(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with every foldable Conv -> BatchNormalization pair merged into the Conv."""
    graph = import_graph(model)
    if not FoldBatchNorm()(graph).changed:
        out = ModelProto()
        out.CopyFrom(model)
        return out
    return export_model(graph, model)


def _foldable_bn(conv: gs.Node, memo: dict, outputs: set[str]) -> gs.Node | None:
    if not is_op(conv, "Conv") or len(conv.inputs) < 2:
        return None
    bn = sole_consumer(conv.outputs[0], outputs)
    if bn is None or not is_op(bn, "BatchNormalization"):
        return None
    if bn.inputs[0] is not conv.outputs[0] or any(t.name for t in bn.outputs[1:]):
        return None
    if bn.attrs.get("training_mode", 0):
        return None
    w = constant_value(conv.inputs[1], memo)
    if w is None or w.dtype != np.float32 or w.ndim < 3:
        return None
    if len(conv.inputs) > 2 and conv.inputs[2].name and constant_value(conv.inputs[2], memo) is None:
        return None
    params = [constant_value(t, memo) for t in bn.inputs[1:5]]
    if len(params) < 4 or any(p is None or p.shape != (w.shape[0],) for p in params):
        return None
    return bn


def _folded_params(conv: gs.Node, bn: gs.Node, memo: dict) -> tuple[np.ndarray, np.ndarray]:
    w = constant_value(conv.inputs[1], memo).astype(np.float64)
    c = w.shape[0]
    has_bias = len(conv.inputs) > 2 and conv.inputs[2].name
    b = constant_value(conv.inputs[2], memo).astype(np.float64) if has_bias else np.zeros(c)
    gamma, beta, mean, var = (constant_value(t, memo).astype(np.float64) for t in bn.inputs[1:5])
    eps = bn.attrs.get("epsilon", 1e-5)
    s = gamma / np.sqrt(var + float(np.float32(eps)))
    w_folded = (w * s.reshape((c,) + (1,) * (w.ndim - 1))).astype(np.float32)
    b_folded = ((b - mean) * s + beta).astype(np.float32)
    return w_folded, b_folded


def _private(graph: gs.Graph, conv: gs.Node, tensor: gs.Tensor, outputs: set[str]) -> bool:
    """``tensor`` is an initializer only ``conv`` reads (and not a graph input or output)."""
    return (isinstance(tensor, gs.Constant) and tensor.name not in outputs
            and all(t is not tensor for t in graph.inputs)
            and len(tensor.outputs) == 1 and tensor.outputs[0] is conv)


def _set_param(conv: gs.Node, slot: int, value: np.ndarray, taken: set[str], stem: str,
               private: set[int]) -> None:
    """Point ``conv.inputs[slot]`` at ``value``: overwrite the initializer if only this Conv uses it."""
    old = conv.inputs[slot]
    if id(old) in private:
        old.values = value
        old.data_location = None  # a weight read from disk (passes.external) is now held in memory
        return
    conv.inputs[slot] = gs.Constant(unique_name(stem, taken), value)
