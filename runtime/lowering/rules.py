"""Exact rewrites of a lowered graph: rules on one matcher (each docstring says why it is exact).

A :class:`Rule` is a named pair: ``match(ctx, node)`` returns what it found starting at
``node`` (or ``None``) and ``rewrite(ctx, found)`` edits the graph. :class:`RewriteRules` is the
one match loop for all of them, a :class:`~ristretto_onnx.passes.contract.Transformation`: for
each rule in order it scans the nodes, rewrites the first match, and scans again until the rule
no longer matches.

Format assumptions: scales are powers of two whose exponents lie in float32's normal range, and
quantized values are normal float32 numbers (both guaranteed by
:class:`~ristretto_onnx.formats.Fixed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from ristretto_onnx.passes.contract import PassResult, Transformation
from ristretto_onnx.passes.graph import constant_value, is_op, producer, remove_node, subgraph_inputs
from ristretto_onnx.runtime.lowering.params import Params


@dataclass(frozen=True)
class Rule:
    name: str
    match: Callable[[Params, gs.Node], object | None]
    rewrite: Callable[[Params, object], None]


class RewriteRules(Transformation):
    """Apply ``rules`` one after the other, each until it no longer matches."""

    name = "lowering_rules"

    def __init__(self, params: Params, rules: Sequence[Rule]) -> None:
        self.params, self.rules = params, tuple(rules)

    def apply(self, graph: gs.Graph) -> PassResult:
        changed = False
        for rule in self.rules:
            while True:
                found = next((m for node in graph.nodes if (m := rule.match(self.params, node))), None)
                if found is None:
                    break
                rule.rewrite(self.params, found)
                changed = True
        return PassResult(graph, changed)


def pow2_exponent(value: float | None) -> int | None:
    """e if ``value == 2**e`` exactly, else None."""
    if value is None or value <= 0 or not math.isfinite(value):
        return None
    m, e = math.frexp(value)
    return e - 1 if m == 0.5 else None


def _sole_user(p: Params, tensor: gs.Tensor) -> gs.Node | None:
    users = tensor.outputs
    return users[0] if len(users) == 1 and tensor.name not in p.outputs else None


def _scale(p: Params, node: gs.Node) -> int | None:
    """The exponent of the power-of-two scalar parameter of ``Mul(data, param)``, if that is what
    ``node`` is."""
    if is_op(node, "Mul") and len(node.inputs) == 2:
        return pow2_exponent(p.value(node.inputs[1]))
    return None


# ---- Mul(2^a) -> [Relu] -> Mul(2^b)  ==>  [Relu] -> Mul(2^(a+b)) ------------------------------

def _match_merge_scales(p: Params, first: gs.Node):
    """Exact: ReLU commutes with a positive scale (signed zeros included: -0 * 2^a = -0), and the
    value after the first Mul is a quantized value ``k * 2^a`` held exactly, so one multiplication
    by 2^(a+b) rounds the same real number ``k * 2^(a+b)`` the two did. 2^(a+b) must itself be a
    normal float32 for that."""
    a = _scale(p, first)
    if a is None:
        return None
    nxt = _sole_user(p, first.outputs[0])
    relu = None
    if nxt is not None and is_op(nxt, "Relu"):
        relu, nxt = nxt, _sole_user(p, nxt.outputs[0])
    if nxt is None or _scale(p, nxt) is None \
            or nxt.inputs[0] is not (relu.outputs[0] if relu else first.outputs[0]):
        return None
    e = a + _scale(p, nxt)
    return (first, relu, nxt, e) if -126 <= e <= 127 else None


def _merge_scales(p: Params, found) -> None:
    first, relu, nxt, e = found
    (relu or nxt).inputs[0] = first.inputs[0]
    nxt.inputs[1] = p.new("merged", 2.0**e)
    remove_node(p.graph, first)


# ---- Relu -> Mul(2^a) -> Clip(lo, hi)  ==>  Mul(2^a) -> Clip(0, hi) ----------------------------

def _match_relu_into_clip(p: Params, relu: gs.Node):
    """Exact for onnxruntime's kernels (lo < 0 < hi): negative inputs give +0 both ways,
    ``Relu(-0) * 2^a`` and ``Clip(-0 * 2^a, 0, hi)`` are both -0 (checked by the tests)."""
    if not is_op(relu, "Relu"):
        return None
    mul = _sole_user(p, relu.outputs[0])
    if mul is None or _scale(p, mul) is None or mul.inputs[0] is not relu.outputs[0]:
        return None
    # A scale below 1 could flush a tiny negative input to -0 where ReLU gives +0; integers
    # (a Round's output) cannot underflow.
    src = producer(relu.inputs[0])
    if _scale(p, mul) < 0 and (src is None or not is_op(src, "Round")):
        return None
    clip = _sole_user(p, mul.outputs[0])
    if clip is None or not is_op(clip, "Clip") or len(clip.inputs) != 3 \
            or clip.inputs[0] is not mul.outputs[0]:
        return None
    lo, hi = p.value(clip.inputs[1]), p.value(clip.inputs[2])
    return (relu, mul, clip) if lo is not None and hi is not None and lo < 0 < hi else None


def _relu_into_clip(p: Params, found) -> None:
    relu, mul, clip = found
    mul.inputs[0] = relu.inputs[0]
    clip.inputs[1] = p.new("relu_lo", 0.0)
    remove_node(p.graph, relu)


# ---- Relu -> QuantizeLinear -> [Clip] -> DequantizeLinear: the ReLU becomes a clip at 0 --------

def _match_relu_into_quantize(p: Params, relu: gs.Node):
    """Exact on integers: QuantizeLinear is monotonic and maps 0 to 0, so ReLU before it equals
    clipping its (integer) result at 0 from below."""
    if not is_op(relu, "Relu"):
        return None
    q = _sole_user(p, relu.outputs[0])
    if q is None or not is_op(q, "QuantizeLinear") or not q.name.endswith("/Quantize") \
            or q.inputs[0] is not relu.outputs[0]:
        return None
    nxt = _sole_user(p, q.outputs[0])
    if nxt is None:
        return None
    if (is_op(nxt, "Clip") and nxt.name.endswith("/ClipInt")) or is_op(nxt, "DequantizeLinear"):
        return relu, q, nxt
    return None


def _relu_into_quantize(p: Params, found) -> None:
    relu, q, nxt = found
    if is_op(nxt, "Clip"):
        nxt.inputs[1] = p.new("relu_lo", 0, TensorProto.INT8)
    else:
        clipped = gs.Variable(f"{q.outputs[0].name}_relu")
        hi = p.new("relu_hi", 127, TensorProto.INT8)
        clip = gs.Node("Clip", f"{q.name}_relu/ClipInt",
                       inputs=[q.outputs[0], p.new("relu_lo", 0, TensorProto.INT8), hi],
                       outputs=[clipped])
        p.graph.nodes.insert(p.graph.nodes.index(nxt), clip)
        nxt.inputs[0] = clipped
    q.inputs[0] = relu.inputs[0]
    remove_node(p.graph, relu)


# ---- Round -> Mul(2^k) -> Clip(lo, hi) -> Round, k >= 0: the second Round goes -----------------

def _match_double_round(p: Params, clip: gs.Node):
    """The first Round gives integers, scaling by 2^k (k >= 0) keeps them integers, the bounds
    are integers, so the second Round changes nothing (Round(-0) is -0)."""
    if not is_op(clip, "Clip") or len(clip.inputs) != 3:
        return None
    lo, hi = p.value(clip.inputs[1]), p.value(clip.inputs[2])
    if lo is None or hi is None or lo != math.floor(lo) or hi != math.floor(hi):
        return None
    mul = producer(clip.inputs[0])
    if mul is None or _scale(p, mul) is None or _scale(p, mul) < 0:
        return None
    src = producer(mul.inputs[0])
    if src is None or not is_op(src, "Round"):
        return None
    second = _sole_user(p, clip.outputs[0])
    if second is None or not is_op(second, "Round") or second.outputs[0].name in p.outputs:
        return None
    out = second.outputs[0]
    if any(out.name in subgraph_inputs(n) for n in out.outputs):
        return None
    return clip, second


def _drop_double_round(p: Params, found) -> None:
    clip, second = found
    out = second.outputs[0]
    for node in list(out.outputs):
        for k, t in enumerate(node.inputs):
            if t is out:
                node.inputs[k] = clip.outputs[0]
    remove_node(p.graph, second)


# ---- Mul(2^-f) -> Conv/Gemm/MatMul with constant weights: scale the weights instead -------------

def _match_scale_into_weights(p: Params, mul: gs.Node):
    """Exact: every product ``w * (k 2^-f)`` equals ``(w 2^-f) * k`` as a real number, so each
    one and every sum of them round identically, provided ``w 2^-f`` is itself exact (no value
    becomes subnormal or overflows; checked)."""
    e = _scale(p, mul)
    if e is None:
        return None
    layer = _sole_user(p, mul.outputs[0])
    if layer is None or (layer.domain or "") not in ("", "ai.onnx") \
            or layer.op not in ("Conv", "Gemm", "MatMul"):
        return None
    if len(layer.inputs) < 2 or layer.inputs[0] is not mul.outputs[0] \
            or layer.inputs[1] is mul.outputs[0]:
        return None
    w_t = layer.inputs[1]
    if not isinstance(w_t, gs.Constant) or any(t is w_t for t in p.graph.inputs):
        return None
    w = constant_value(w_t)
    if w.dtype != np.float32:
        return None
    step = np.float32(p.value(mul.inputs[1]))
    scaled = w * step
    nonzero = np.abs(scaled[w != 0])
    if nonzero.size and (not np.isfinite(nonzero).all() or nonzero.min() < np.finfo(np.float32).tiny):
        return None
    if not np.array_equal(scaled / step, w):
        return None
    return mul, layer, scaled.astype(np.float32), f"{w_t.name}__x{e}"


def _scale_into_weights(p: Params, found) -> None:
    mul, layer, scaled, name = found
    layer.inputs[1] = gs.Constant(name, scaled)
    layer.inputs[0] = mul.inputs[0]
    remove_node(p.graph, mul)


MERGE_SCALES = Rule("merge_scales", _match_merge_scales, _merge_scales)
RELU_INTO_CLIP = Rule("relu_into_clip", _match_relu_into_clip, _relu_into_clip)
RELU_INTO_QUANTIZE = Rule("relu_into_quantize", _match_relu_into_quantize, _relu_into_quantize)
DROP_DOUBLE_ROUND = Rule("drop_double_round", _match_double_round, _drop_double_round)
FOLD_SCALE_INTO_WEIGHTS = Rule("fold_scale_into_weights", _match_scale_into_weights,
                               _scale_into_weights)

#: Rules that keep one structure for every fixed-point activation format.
STRUCTURAL_RULES = (MERGE_SCALES, RELU_INTO_CLIP, RELU_INTO_QUANTIZE)
#: Rules that depend on the format values: in parametric mode they would multiply the number
#: of graph structures (sessions) a search needs.
VALUE_RULES = (DROP_DOUBLE_ROUND, FOLD_SCALE_INTO_WEIGHTS)
