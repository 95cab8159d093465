"""Cross-layer equalization of consecutive convolutions (Nagel et al. 2019, "Data-free
quantization", sec. 4.1), before any format is chosen.

Depthwise-separable networks (MobileNet) have weights whose output channels differ in range by
orders of magnitude: one format per tensor must cover the widest channel and rounds the others
away; even per-channel formats see the next layer's input channels unbalanced. For two
convolutions ``A -> act -> B`` where ``act`` is nothing, ReLU or ReLU6 (``Clip(0, hi)``) and each
link has one reader, a positive factor ``s_c`` per channel of A's output can move between them:

    A'[c] = A[c] / s_c,  bias'[c] = bias[c] / s_c,  B'[:, c] = B[:, c] * s_c

is exact in real arithmetic (ReLU is positively homogeneous), and a ReLU6 becomes a clip at
``hi / s_c`` per channel: ``Relu(x) -> Min(x, hi / s)``, a per-channel saturation threshold
that an accelerator gets for free (the range step measures the layer output after it, bounded
by the largest ``hi / s_c``: passes.analysis.clip_bounds). ``s_c = sqrt(r_A(c) / r_B(c))``
(max |w| of A's output channel c and of B's weights reading channel c) gives both the range
``sqrt(r_A r_B)``. Pairs are
equalized in graph order, :data:`ITERATIONS` sweeps (a chain's factors interact).

That balances the weights only. The tensor between A and B (the link) scales with A's channel:
its channel c becomes ``x_c / s_c``, so a channel whose weights are small in A and large in B
gets a small ``s_c`` and grows, and on a trained network (EfficientNet-Lite0, docs/ACCURACY.md)
the per-tensor activation format of the link then has to cover channels 10^3 apart, which
costs what balancing the weights gains. With the link's per-channel maxima ``a_c`` measured on
calibration data (``link_max``, ristretto_onnx.link_ranges), A's side of the balance is the
larger of A's weight range and the link's range, each relative to its tensor's largest:

    s_c = sqrt(max(r_A(c) / max r_A, a_c / max a) / (r_B(c) / max r_B)),  a_c <- a_c / s_c

so no channel of A's weights *or* of the link is pushed above the level both sides meet at
(the per-tensor formats of all three tensors then see balanced channels). Without data the
weights-only rule applies.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto

from ristretto_onnx.passes.contract import PassResult, Transformation
from ristretto_onnx.passes.graph import (
    constant_value, consumer_lookup, export_model, import_graph, is_op, remove_node, sole_readers,
    tensor_names, unique_name,
)

ITERATIONS = 3


class Equalize(Transformation):
    """Balance every equalizable Conv -> (ReLU | ReLU6) -> Conv pair (see the module docstring)."""

    name = "equalize"

    def __init__(self, iterations: int = ITERATIONS, link_max: Mapping[str, np.ndarray] | None = None) -> None:
        self.iterations = iterations
        self.link_max = {k: np.asarray(v, np.float64).ravel() for k, v in (link_max or {}).items()}

    def apply(self, graph: gs.Graph) -> PassResult:
        pairs = _pairs(graph)
        if not pairs:
            return PassResult(graph, False)
        clip_hi: dict[str, np.ndarray] = {}
        measured = {link_name(a, act): self.link_max.get(link_name(a, act)) for a, act, _ in pairs}
        for _ in range(self.iterations):
            for a, act, b in pairs:
                key = link_name(a, act)
                s = _balance(a, b, measured[key])
                if measured[key] is not None:
                    measured[key] = measured[key] / s  # the link's channel c carries x_c / s_c now
                if act is not None and is_op(act, "Clip"):
                    key = act.outputs[0].name
                    hi = clip_hi.get(key)
                    if hi is None:
                        hi = np.full(s.size, _scalar(constant_value(act.inputs[2])))
                    clip_hi[key] = hi / s
        taken = tensor_names(graph)
        for _, act, _ in pairs:
            if act is not None and act.outputs[0].name in clip_hi:
                _per_channel_clip(graph, act, clip_hi[act.outputs[0].name], taken)
        return PassResult(graph, True)


def equalize(model: ModelProto, iterations: int = ITERATIONS,
             link_max: Mapping[str, np.ndarray] | None = None) -> ModelProto:
    """A copy of ``model`` with every equalizable pair balanced (see the module docstring);
    ``link_max``: ``{link tensor: per-channel max |x|}`` measured on calibration data."""
    graph = import_graph(model)
    if not Equalize(iterations, link_max)(graph).changed:
        out = ModelProto()
        out.CopyFrom(model)
        return out
    return export_model(graph, model)


def links(model: ModelProto) -> list[str]:
    """The tensors between equalizable pairs (an activation's output, else A's output): where
    ``link_max`` is measured."""
    return [link_name(a, act) for a, act, _ in _pairs(import_graph(model))]


def link_name(a: gs.Node, act: gs.Node | None) -> str:
    return (act or a).outputs[0].name


def _pairs(graph: gs.Graph) -> list[tuple[gs.Node, gs.Node | None, gs.Node]]:
    """``(A, act or None, B)`` node triples that can be equalized."""
    readers, sole = consumer_lookup(graph), sole_readers(graph)
    out = []
    for a in graph.nodes:
        if not is_op(a, "Conv") or not isinstance(a.inputs[1], gs.Constant):
            continue
        act = sole.get(a.outputs[0].name)
        b = act
        if act is not None and (is_op(act, "Relu") or is_op(act, "Clip")):
            if is_op(act, "Clip") and not _is_relu6(act):
                continue
            b = sole.get(act.outputs[0].name)
        else:
            act = None
        if b is None or not is_op(b, "Conv") or b.inputs[0] is not (act or a).outputs[0] \
                or not isinstance(b.inputs[1], gs.Constant):
            continue
        if len(readers(a.inputs[1])) != 1 or len(readers(b.inputs[1])) != 1:
            continue  # shared weights
        out.append((a, act, b))
    return out


def _is_relu6(clip: gs.Node) -> bool:
    """``Clip(x, 0, hi)`` with constant scalar bounds and ``hi > 0``."""
    bounds = [constant_value(clip.inputs[i]) if len(clip.inputs) > i and clip.inputs[i].name else None
              for i in (1, 2)]
    lo, hi = bounds
    return not (lo is None or hi is None or lo.size != 1 or hi.size != 1 or _scalar(lo) != 0.0
                or _scalar(hi) <= 0)


def _scalar(value: np.ndarray) -> float:
    return float(np.asarray(value).ravel()[0])


def _balance(a: gs.Node, b: gs.Node, link: np.ndarray | None = None) -> np.ndarray:
    """Move ``s_c = sqrt(r_A(c) / r_B(c))`` from A's output channel c into B's input channel c
    (``r_A`` relative, and raised to the link's relative range ``link``, when given); returns ``s``."""
    wa = constant_value(a.inputs[1]).astype(np.float64)
    wb = constant_value(b.inputs[1]).astype(np.float64)
    c = wa.shape[0]
    groups_b = int(b.attrs.get("group", 1))
    cg, ob = wb.shape[1], wb.shape[0]
    # which input channel of B each (o, j) weight reads: group(o) * C/g + j
    read = (np.arange(ob) // (ob // groups_b))[:, None] * cg + np.arange(cg)[None, :]
    r_a = np.abs(wa.reshape(c, -1)).max(axis=1)
    r_b = np.zeros(c)
    np.maximum.at(r_b, read.ravel(), np.abs(wb.reshape(ob, cg, -1)).max(axis=2).ravel())
    if link is not None and link.size == c and link.max() > 0 and r_a.max() > 0 and r_b.max() > 0:
        r_a = np.maximum(r_a / r_a.max(), link / link.max())
        r_b = r_b / r_b.max()
    s = np.where((r_a > 0) & (r_b > 0), np.sqrt(r_a / np.where(r_b > 0, r_b, 1.0)), 1.0)
    a.inputs[1].values = (wa / s.reshape((c,) + (1,) * (wa.ndim - 1))).astype(np.float32)
    if len(a.inputs) > 2 and isinstance(a.inputs[2], gs.Constant):
        bias = constant_value(a.inputs[2]).astype(np.float64)
        a.inputs[2].values = (bias / s).astype(np.float32)
    b.inputs[1].values = (wb * s[read].reshape(ob, cg, *([1] * (wb.ndim - 2)))).astype(np.float32)
    return s


def _per_channel_clip(graph: gs.Graph, clip: gs.Node, hi: np.ndarray, taken: set[str]) -> None:
    """Replace ``Clip(x, 0, hi)`` by ``Min(Relu(x), hi_c)`` with one bound per channel (axis 1)."""
    y = clip.outputs[0]
    bound = gs.Constant(unique_name(f"{y.name}_hi", taken), hi.reshape(-1, 1, 1).astype(np.float32))
    mid = gs.Variable(unique_name(f"{y.name}_relu", taken))
    x = clip.inputs[0]
    i = next(k for k, n in enumerate(graph.nodes) if n is clip)
    remove_node(graph, clip)
    graph.nodes[i:i] = [gs.Node("Relu", f"{clip.name}/Relu", inputs=[x], outputs=[mid]),
                        gs.Node("Min", f"{clip.name}/Min", inputs=[mid, bound], outputs=[y])]
