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
from onnx import ModelProto, NodeProto, helper, numpy_helper

from ristretto_onnx.passes.graph_index import GraphIndex, unique_name


def fold_batchnorm(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with every foldable Conv -> BatchNormalization pair merged into the Conv."""
    out = ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = GraphIndex(graph)
    folds = [(conv, bn) for conv in graph.node if (bn := _foldable_bn(index, conv)) is not None]
    if not folds:
        return out
    taken = index.all_tensor_names()
    removed_bns: set[int] = set()
    dead_tensors: set[str] = set()
    for conv, bn in folds:
        w, b = _folded_params(index, conv, bn)
        bias_stem = conv.input[2] if len(conv.input) > 2 and conv.input[2] else f"{conv.input[1]}_bias"
        dead_tensors.update(n for n in conv.input[1:3] if n)  # replaced, dropped if now unused
        _set_param(graph, index, conv, 1, w, taken, stem=f"{conv.input[1]}_bnfold")
        if len(conv.input) < 3:
            conv.input.append("")
        _set_param(graph, index, conv, 2, b, taken, stem=f"{bias_stem}_bnfold")
        dead_tensors.add(conv.output[0])
        conv.output[0] = bn.output[0]
        removed_bns.add(id(bn))
        dead_tensors.update(n for n in bn.input[1:] if n)
    keep = [n for n in graph.node if id(n) not in removed_bns]
    del graph.node[:]
    graph.node.extend(keep)
    _drop_unused(graph, dead_tensors)
    return out


def _foldable_bn(index: GraphIndex, conv: NodeProto) -> NodeProto | None:
    if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
        return None
    bn = index.sole_consumer(conv.output[0])
    if bn is None or bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
        return None
    if bn.input[0] != conv.output[0] or any(bn.output[1:]):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
    if attrs.get("training_mode", 0):
        return None
    w = index.constant_value(conv.input[1])
    if w is None or w.dtype != np.float32 or w.ndim < 3:
        return None
    if len(conv.input) > 2 and conv.input[2] and index.constant_value(conv.input[2]) is None:
        return None
    params = [index.constant_value(n) for n in bn.input[1:5]]
    if any(p is None or p.shape != (w.shape[0],) for p in params):
        return None
    return bn


def _folded_params(index: GraphIndex, conv: NodeProto, bn: NodeProto) -> tuple[np.ndarray, np.ndarray]:
    w = index.constant_value(conv.input[1]).astype(np.float64)
    c = w.shape[0]
    has_bias = len(conv.input) > 2 and conv.input[2]
    b = index.constant_value(conv.input[2]).astype(np.float64) if has_bias else np.zeros(c)
    gamma, beta, mean, var = (index.constant_value(n).astype(np.float64) for n in bn.input[1:5])
    eps = next((helper.get_attribute_value(a) for a in bn.attribute if a.name == "epsilon"), 1e-5)
    s = gamma / np.sqrt(var + float(np.float32(eps)))
    w_folded = (w * s.reshape((c,) + (1,) * (w.ndim - 1))).astype(np.float32)
    b_folded = ((b - mean) * s + beta).astype(np.float32)
    return w_folded, b_folded


def _set_param(graph, index: GraphIndex, conv: NodeProto, slot: int, value: np.ndarray,
               taken: set[str], stem: str) -> None:
    """Point ``conv.input[slot]`` at ``value``: overwrite the initializer if only this Conv uses it."""
    old = conv.input[slot]
    private = (old in index.initializers and old not in index.graph_inputs
               and old not in index.graph_outputs
               and [id(n) for n in index.consumers_of(old)] == [id(conv)])
    if private:
        for t in graph.initializer:
            if t.name == old:
                t.CopyFrom(numpy_helper.from_array(value, old))
                return
    name = unique_name(stem, taken)
    graph.initializer.append(numpy_helper.from_array(value, name))
    conv.input[slot] = name


def _drop_unused(graph, candidates: set[str]) -> None:
    """Remove initializers and value_info among ``candidates`` that nothing refers to any more."""
    used = {o.name for o in graph.output} | {i.name for i in graph.input}
    index = GraphIndex(graph)
    used.update(index.consumers)
    used.update(index.producer)
    dead = {n for n in candidates if n not in used}
    if not dead:
        return
    keep_init = [t for t in graph.initializer if t.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    keep_vi = [v for v in graph.value_info if v.name not in dead]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)

