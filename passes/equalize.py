"""Cross-layer equalization of consecutive convolutions (Nagel et al. 2019, "Data-free
quantization", sec. 4.1), before any format is chosen.

Depthwise-separable networks (MobileNet) have weights whose output channels differ in range by
orders of magnitude: one format per tensor must cover the widest channel and rounds the others
away; even per-channel formats see the next layer's input channels unbalanced. For two
convolutions ``A -> act -> B`` where ``act`` is nothing, ReLU or ReLU6 (``Clip(0, hi)``) and each
link has one reader, a positive factor ``s_c`` per channel of A's output can move between them:

    A'[c] = A[c] / s_c,  bias'[c] = bias[c] / s_c,  B'[:, c] = B[:, c] * s_c

is exact in real arithmetic (ReLU is positively homogeneous), and a ReLU6 becomes a clip at
``hi / s_c`` per channel: ``Max(x, 0) -> Min(x, hi / s)``, a per-channel saturation threshold
that an accelerator gets for free. ``s_c = sqrt(r_A(c) / r_B(c))`` (max |w| of A's output channel
c and of B's weights reading channel c) gives both the range ``sqrt(r_A r_B)``. Pairs are
equalized in graph order, :data:`ITERATIONS` sweeps (a chain's factors interact).
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from ristretto_onnx.passes.external import tensor_array

from ristretto_onnx.passes.analysis.proto_index import GraphIndex, unique_name

ITERATIONS = 3


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pairs(model: ModelProto) -> list[tuple]:
    """``(A, act or None, B)`` node triples that can be equalized."""
    index = GraphIndex(model.graph)
    out = []
    for a in model.graph.node:
        if a.op_type != "Conv" or a.domain not in ("", "ai.onnx") or a.input[1] not in index.initializers:
            continue
        act = index.sole_consumer(a.output[0])
        b = act
        if act is not None and act.op_type in ("Relu", "Clip"):
            if act.op_type == "Clip":
                lo = index.constant_value(act.input[1]) if len(act.input) > 1 and act.input[1] else None
                hi = index.constant_value(act.input[2]) if len(act.input) > 2 and act.input[2] else None
                if lo is None or hi is None or lo.size != 1 or hi.size != 1 or float(lo) != 0.0 or float(hi) <= 0:
                    continue
            b = index.sole_consumer(act.output[0])
        else:
            act = None
        if b is None or b.op_type != "Conv" or b.input[0] != (act.output[0] if act else a.output[0]) \
                or b.input[1] not in index.initializers:
            continue
        if len(index.consumers_of(a.input[1])) != 1 or len(index.consumers_of(b.input[1])) != 1:
            continue  # shared weights
        out.append((a, act, b))
    return out


def equalize(model: ModelProto, iterations: int = ITERATIONS) -> ModelProto:
    """A copy of ``model`` with every equalizable pair balanced (see the module docstring)."""
    out = ModelProto()
    out.CopyFrom(model)
    pairs = _pairs(out)
    if not pairs:
        return out
    inits = {t.name: t for t in out.graph.initializer}
    taken = GraphIndex(out.graph).all_tensor_names()
    clip_hi: dict[str, np.ndarray] = {}
    for _ in range(iterations):
        for a, act, b in pairs:
            wa = tensor_array(inits[a.input[1]]).astype(np.float64)
            wb = tensor_array(inits[b.input[1]]).astype(np.float64)
            c = wa.shape[0]
            groups_b = int(_attrs(b).get("group", 1))
            cg = wb.shape[1]
            ob = wb.shape[0]
            # which input channel of B each (o, j) weight reads: group(o) * C/g + j
            read = (np.arange(ob) // (ob // groups_b))[:, None] * cg + np.arange(cg)[None, :]
            r_a = np.abs(wa.reshape(c, -1)).max(axis=1)
            r_b = np.zeros(c)
            np.maximum.at(r_b, read.ravel(), np.abs(wb.reshape(ob, cg, -1)).max(axis=2).ravel())
            s = np.where((r_a > 0) & (r_b > 0), np.sqrt(r_a / np.where(r_b > 0, r_b, 1.0)), 1.0)
            inits[a.input[1]].CopyFrom(numpy_helper.from_array(
                (wa / s.reshape((c,) + (1,) * (wa.ndim - 1))).astype(np.float32), a.input[1]))
            if len(a.input) > 2 and a.input[2] in inits:
                bias = tensor_array(inits[a.input[2]]).astype(np.float64)
                inits[a.input[2]].CopyFrom(numpy_helper.from_array((bias / s).astype(np.float32), a.input[2]))
            inits[b.input[1]].CopyFrom(numpy_helper.from_array(
                (wb * s[read].reshape(ob, cg, *([1] * (wb.ndim - 2)))).astype(np.float32), b.input[1]))
            if act is not None and act.op_type in ("Clip", "Min"):
                key = act.output[0]
                hi = clip_hi.get(key)
                if hi is None:
                    hi = np.full(c, float(GraphIndex(out.graph).constant_value(act.input[2])))
                clip_hi[key] = hi / s
    for a, act, b in pairs:
        if act is not None and act.output[0] in clip_hi:
            _per_channel_clip(out, act, clip_hi[act.output[0]], taken)
    return out


def _per_channel_clip(model: ModelProto, clip, hi: np.ndarray, taken: set[str]) -> None:
    """Replace ``Clip(x, 0, hi)`` by ``Min(Max(x, 0), hi_c)`` with one bound per channel (axis 1)."""
    zero = unique_name(f"{clip.output[0]}_lo", taken)
    bound = unique_name(f"{clip.output[0]}_hi", taken)
    mid = unique_name(f"{clip.output[0]}_relu", taken)
    taken |= {zero, bound, mid}
    model.graph.initializer.append(numpy_helper.from_array(np.float32(0.0), zero))
    model.graph.initializer.append(numpy_helper.from_array(hi.reshape(-1, 1, 1).astype(np.float32), bound))
    nodes = list(model.graph.node)
    i = nodes.index(clip)
    new = [helper.make_node("Max", [clip.input[0], zero], [mid], name=f"{clip.name}/Max"),
           helper.make_node("Min", [mid, bound], [clip.output[0]], name=f"{clip.name}/Min")]
    del model.graph.node[:]
    model.graph.node.extend(nodes[:i] + new + nodes[i + 1:])
