"""Compile a simulated model into the fastest graph that computes exactly the same numbers.

The reference is the simulated model itself run by a plain onnxruntime session: every
``QuantizeSim`` node runs its standard-op function body (:mod:`ristretto_onnx.ops`). The lowered
graph must give bit-identical outputs, signed zeros included; what changes is how much work
onnxruntime does per image:

* **Weights** (a ``QuantizeSim`` of a constant) are quantized once in numpy with the reference
  quantizer and stored as the initializer the layer reads. onnxruntime would fold the function
  body the same way, but only after inlining and folding it at every session creation.
* **Activations in fixed point** become ``Mul(2^f) -> Clip(lo, hi) -> Round -> Mul(2^-f)``.
  Clipping before rounding is exact because the bounds are integers (rounding is monotonic and
  leaves integers alone), and it lets onnxruntime fuse the Clip into the preceding convolution.
  With ``parametric=True`` the four scalars are graph inputs fed at every run, so changing a
  fixed-point activation format never rebuilds the session; otherwise they are constants, which
  onnxruntime folds into the convolution (the scale) and its activation (the clip).
* Other activation formats (minifloat, power of two, per-channel, stochastic rounding) keep the
  function body.

Then a few rewrites remove work without changing a single bit (each comment says why it is
exact): consecutive power-of-two scales around a ReLU are merged, a ReLU followed by a quantizer
becomes the quantizer's lower clip bound, a second rounding of values that are already integers
is dropped, and (constants only) the scale in front of a convolution is folded into its weights.

Format assumptions the rewrites rely on: scales are powers of two whose exponents lie in
float32's normal range, and quantized values are normal float32 numbers (both guaranteed by
:class:`~ristretto_onnx.formats.Fixed`). NaN inputs are outside the contract (the order of Clip
and Round may decide whether a NaN survives).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from ristretto_onnx.formats import Fixed, UFixed, quantize
from ristretto_onnx.ops import attach_functions, is_quantize_sim, node_format

#: Prefix of the scalar graph inputs a parametric graph is fed with.
PARAM_PREFIX = "rsim::"


@dataclass(frozen=True, eq=False)
class Lowered:
    """A lowered graph, the scalars to feed it (parametric mode) and a key of its structure.

    Two lowerings with the same ``key`` can share one onnxruntime session: they differ at most in
    the values of ``feeds``.
    """

    model: ModelProto = field(repr=False)
    feeds: dict[str, np.ndarray] = field(repr=False)
    key: str


class WeightCache:
    """Quantized weights by (tensor, format): a search re-quantizes the same tensors many times."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._items: dict[tuple[str, str, str], TensorProto] = {}
        self.max_entries = max_entries

    def get(self, name: str, fmt, rounding: str, array_fn, out_name: str) -> TensorProto:
        key = (name, str(fmt), rounding)
        hit = self._items.get(key)
        if hit is None:
            if len(self._items) >= self.max_entries:
                self._items.clear()
            hit = numpy_helper.from_array(quantize(array_fn(), fmt, rounding=rounding), "")
            self._items[key] = hit
        out = TensorProto()
        out.CopyFrom(hit)
        out.name = out_name
        return out


def _pow2_exponent(value: float) -> int | None:
    """e if ``value == 2**e`` exactly, else None."""
    if value <= 0 or not math.isfinite(value):
        return None
    m, e = math.frexp(value)
    return e - 1 if m == 0.5 else None


class _Graph:
    """The top-level graph being rewritten, with the scalar parameters kept on the side."""

    def __init__(self, model: ModelProto, parametric: bool) -> None:
        self.model = model
        self.graph = model.graph
        self.parametric = parametric
        self.params: dict[str, float] = {}
        self.param_types: dict[str, int] = {}
        self.inits = {i.name: i for i in self.graph.initializer}
        self.graph_inputs = {i.name for i in self.graph.input}
        self.outputs = {o.name for o in self.graph.output}
        self._n = 0

    # parameters -----------------------------------------------------------------------------

    def param(self, stem: str, value: float, dtype: int = TensorProto.FLOAT) -> str:
        self._n += 1
        name = f"{PARAM_PREFIX}{stem}#{self._n}"
        self.params[name] = float(value)
        self.param_types[name] = dtype
        return name

    def int8_zero(self) -> str:
        name = f"{PARAM_PREFIX}zero_int8"
        if name not in self.inits:
            self.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int8), name))
            self.inits[name] = self.graph.initializer[-1]
        return name

    def uint8_zero(self) -> str:
        name = f"{PARAM_PREFIX}zero_uint8"
        if name not in self.inits:
            self.graph.initializer.append(numpy_helper.from_array(np.array(0, np.uint8), name))
            self.inits[name] = self.graph.initializer[-1]
        return name

    def value(self, name: str) -> float | None:
        return self.params.get(name)

    # structure ------------------------------------------------------------------------------

    def consumers(self) -> dict[str, list[NodeProto]]:
        users: dict[str, list[NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                users[name].append(node)
            for name in _subgraph_inputs(node):
                users[name].append(node)
        return users

    def producers(self) -> dict[str, NodeProto]:
        return {o: n for n in self.graph.node for o in n.output}

    def constant(self, name: str) -> bool:
        return name in self.inits and name not in self.graph_inputs


def _subgraph_inputs(node: NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == 5 else list(attr.graphs)  # 5 = GRAPH
        for g in graphs:
            for n in g.node:
                names.update(n.input)
                names |= _subgraph_inputs(n)
    return names


def _constants_to_initializers(g: _Graph) -> None:
    """``Constant`` nodes with a tensor value become initializers, so weights are recognized."""
    keep = []
    for node in g.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            t = TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            g.graph.initializer.append(t)
            g.inits[t.name] = g.graph.initializer[-1]
        else:
            keep.append(node)
    del g.graph.node[:]
    g.graph.node.extend(keep)


def _drop_identities(g: _Graph) -> None:
    """Bypass ``Identity`` nodes (float slots) so the patterns below see through them."""
    nested = set()
    for node in g.graph.node:
        nested |= _subgraph_inputs(node)
    rename: dict[str, str] = {}
    keep = []
    for node in g.graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.output[0] not in g.outputs \
                and node.output[0] not in nested:
            src = node.input[0]
            rename[node.output[0]] = rename.get(src, src)
            continue
        keep.append(node)
    for node in keep:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    del g.graph.node[:]
    g.graph.node.extend(keep)


def _lower_quantizers(g: _Graph, weights: WeightCache) -> None:
    sign_free = _sign_free_outputs(g)
    nodes: list[NodeProto] = []
    for node in g.graph.node:
        if not is_quantize_sim(node):
            nodes.append(node)
            continue
        fmt, rounding = node_format(node)
        x, y = node.input[0], node.output[0]
        if g.constant(x) and rounding == "nearest_even":
            tensor = weights.get(x, fmt, rounding, lambda x=x: numpy_helper.to_array(g.inits[x]), y)
            g.graph.initializer.append(tensor)
            g.inits[y] = g.graph.initializer[-1]
            continue
        if isinstance(fmt, UFixed) and rounding == "nearest_even":
            nodes += _lower_ufixed(g, node, fmt)
            continue
        if isinstance(fmt, Fixed) and rounding == "nearest_even" and fmt.bits <= 8 and y in sign_free:
            # Only the sign of a zero result could differ from Round (QuantizeLinear gives +0),
            # and nothing downstream can see it (see _sign_free_outputs).
            stem = node.name or y
            s = g.param(f"{stem}/step", 2.0 ** -fmt.frac_bits)
            base = f"{y}__rsim"
            q = f"{base}_q"
            nodes.append(helper.make_node("QuantizeLinear", [x, s, g.int8_zero()], [q], name=f"{base}/Quantize"))
            # Parametric graphs clip even at 8 bits (a no-op there), so that every width from 2
            # to 8 shares one structure, hence one session, in a search over widths.
            if fmt.bits < 8 or g.parametric:
                lo = g.param(f"{stem}/lo", -(2 ** (fmt.bits - 1)), TensorProto.INT8)
                hi = g.param(f"{stem}/hi", 2 ** (fmt.bits - 1) - 1, TensorProto.INT8)
                nodes.append(helper.make_node("Clip", [q, lo, hi], [f"{base}_qc"], name=f"{base}/ClipInt"))
                q = f"{base}_qc"
            nodes.append(helper.make_node("DequantizeLinear", [q, s, g.int8_zero()], [y], name=f"{base}/Dequantize"))
            continue
        if isinstance(fmt, Fixed) and rounding == "nearest_even":
            stem = node.name or y
            a = g.param(f"{stem}/scale", 2.0 ** fmt.frac_bits)
            lo = g.param(f"{stem}/lo", -(2.0 ** (fmt.bits - 1)))
            hi = g.param(f"{stem}/hi", 2.0 ** (fmt.bits - 1) - 1)
            b = g.param(f"{stem}/step", 2.0 ** -fmt.frac_bits)
            base = f"{y}__rsim"
            nodes += [
                helper.make_node("Mul", [x, a], [f"{base}_scaled"], name=f"{base}/Mul"),
                helper.make_node("Clip", [f"{base}_scaled", lo, hi], [f"{base}_clipped"], name=f"{base}/Clip"),
                helper.make_node("Round", [f"{base}_clipped"], [f"{base}_int"], name=f"{base}/Round"),
                helper.make_node("Mul", [f"{base}_int", b], [y], name=f"{base}/Step"),
            ]
            continue
        nodes.append(node)
    del g.graph.node[:]
    g.graph.node.extend(nodes)


def _lower_ufixed(g: _Graph, node: NodeProto, fmt: UFixed) -> list[NodeProto]:
    """``ufixed:B:F`` as a uint8 ``QuantizeLinear -> [Clip] -> DequantizeLinear`` pair (B <= 8).

    Exact: QuantizeLinear rounds ``x / 2^-F`` (an exact power-of-two scaling) half to even and
    saturates to [0, 255], which is the format's clip for B = 8 (a Clip on the uint8 codes for
    fewer bits); negative values give code 0, dequantized to +0 as the reference gives. Wider
    formats use the float chain ``Mul -> Clip -> Round -> Abs (-0 to +0) -> Mul``.
    """
    x, y = node.input[0], node.output[0]
    stem, base = node.name or y, f"{y}__rsim"
    if fmt.bits <= 8:
        s = g.param(f"{stem}/step", 2.0 ** -fmt.frac_bits)
        zero = g.uint8_zero()
        q = f"{base}_q"
        out = [helper.make_node("QuantizeLinear", [x, s, zero], [q], name=f"{base}/UQuantize")]
        if fmt.bits < 8:
            hi = g.param(f"{stem}/uhi", 2**fmt.bits - 1, TensorProto.UINT8)
            out.append(helper.make_node("Clip", [q, g.param(f"{stem}/ulo", 0, TensorProto.UINT8), hi],
                                        [f"{base}_qc"], name=f"{base}/UClipInt"))
            q = f"{base}_qc"
        out.append(helper.make_node("DequantizeLinear", [q, s, zero], [y], name=f"{base}/UDequantize"))
        return out
    a = g.param(f"{stem}/scale", 2.0 ** fmt.frac_bits)
    hi = g.param(f"{stem}/hi", 2.0**fmt.bits - 1)
    b = g.param(f"{stem}/step", 2.0 ** -fmt.frac_bits)
    lo = g.param(f"{stem}/lo", 0.0)
    return [
        helper.make_node("Mul", [x, a], [f"{base}_scaled"], name=f"{base}/Mul"),
        helper.make_node("Clip", [f"{base}_scaled", lo, hi], [f"{base}_clipped"], name=f"{base}/UClip"),
        helper.make_node("Round", [f"{base}_clipped"], [f"{base}_int"], name=f"{base}/URound"),
        helper.make_node("Abs", [f"{base}_int"], [f"{base}_pos"], name=f"{base}/UPositiveZero"),
        helper.make_node("Mul", [f"{base}_pos", b], [y], name=f"{base}/UStep"),
    ]


#: Ops through which a zero's sign cannot turn into a different value (sums, products, maxima,
#: rounding, data movement): at worst the sign of an exact zero result differs.
_SIGN_TRANSPARENT = frozenset({
    "Add", "AveragePool", "Clip", "Concat", "Flatten", "GlobalAveragePool", "GlobalMaxPool",
    "Identity", "Max", "MaxPool", "Min", "Mul", "Pad", "Relu", "Reshape", "Round", "Slice", "Split",
    "Squeeze", "Sub", "Transpose", "Unsqueeze",
})
#: Ops whose result cannot depend on the sign of a zero input: onnxruntime's convolution and
#: matrix kernels accumulate from +0, and +0 + (-0) = +0 (checked by the tests).
_SIGN_ABSORBING = frozenset({"Conv", "Gemm", "MatMul"})


def _sign_free_outputs(g: _Graph) -> set[str]:
    """Quantizer outputs whose zeros' signs can never reach a graph output.

    Every path from such a tensor goes through sign-transparent ops (or fixed-point quantizers)
    into a convolution or matrix product. For those quantizers a rounding that returns +0 where
    ``Round`` returns -0 (QuantizeLinear) gives bit-identical model outputs.
    """
    users = g.consumers()
    verdict: dict[str, bool] = {}

    def free(name: str, depth: int = 0) -> bool:
        if name in verdict:
            return verdict[name]
        if name in g.outputs or depth > 200:
            return False
        verdict[name] = False  # cycles (there are none in a valid graph) count as visible
        ok = True
        for node in users.get(name, []):
            if node.domain in ("", "ai.onnx") and node.op_type in _SIGN_ABSORBING and name not in node.input[2:]:
                continue
            if is_quantize_sim(node):
                fmt, rounding = node_format(node)
                transparent = isinstance(fmt, (Fixed, UFixed))
            else:
                transparent = node.domain in ("", "ai.onnx") and node.op_type in _SIGN_TRANSPARENT
            if not transparent or _subgraph_inputs(node) or not all(free(o, depth + 1) for o in node.output):
                ok = False
                break
        verdict[name] = ok
        return ok

    return {n.output[0] for n in g.graph.node if is_quantize_sim(n) and free(n.output[0])}


def _relu_into_quantize(g: _Graph) -> bool:
    """``Relu -> QuantizeLinear -> [Clip] -> DequantizeLinear``: the ReLU becomes a clip at 0.

    Exact on integers: QuantizeLinear is monotonic and maps 0 to 0, so ReLU before it equals
    clipping its (integer) result at 0 from below.
    """
    users = g.consumers()
    for relu in g.graph.node:
        if not _is(relu, "Relu"):
            continue
        q = _sole_user(users, relu.output[0], g)
        if q is None or not _is(q, "QuantizeLinear") or not q.name.endswith("/Quantize") \
                or q.input[0] != relu.output[0]:
            continue
        nxt = _sole_user(users, q.output[0], g)
        if nxt is None:
            continue
        if _is(nxt, "Clip") and nxt.name.endswith("/ClipInt"):
            nxt.input[1] = g.param("relu_lo", 0, TensorProto.INT8)
        elif _is(nxt, "DequantizeLinear"):
            clipped = f"{q.output[0]}_relu"
            hi = g.param("relu_hi", 127, TensorProto.INT8)
            clip = helper.make_node("Clip", [q.output[0], g.param("relu_lo", 0, TensorProto.INT8), hi],
                                    [clipped], name=f"{q.name}_relu/ClipInt")
            g.graph.node.insert(list(g.graph.node).index(nxt), clip)
            nxt.input[0] = clipped
        else:
            continue
        q.input[0] = relu.input[0]
        g.graph.node.remove(relu)
        return True
    return False


def _is(node: NodeProto, op: str) -> bool:
    return node.op_type == op and node.domain in ("", "ai.onnx")


def _scale_param(g: _Graph, node: NodeProto) -> str | None:
    """The power-of-two scalar parameter of ``Mul(data, param)``, if that is what ``node`` is."""
    if _is(node, "Mul") and len(node.input) == 2 and node.input[1] in g.params \
            and _pow2_exponent(g.params[node.input[1]]) is not None:
        return node.input[1]
    return None


def _sole_user(users, name: str, g: _Graph) -> NodeProto | None:
    u = users.get(name, [])
    return u[0] if len(u) == 1 and name not in g.outputs else None


def _merge_scales(g: _Graph) -> bool:
    """``Mul(2^a) -> [Relu] -> Mul(2^b)`` becomes ``[Relu] -> Mul(2^(a+b))``.

    Exact: ReLU commutes with a positive scale (signed zeros included: -0 * 2^a = -0), and the
    value after the first Mul is a quantized value ``k * 2^a`` held exactly, so one multiplication
    by 2^(a+b) rounds the same real number ``k * 2^(a+b)`` the two did. 2^(a+b) must itself be a
    normal float32 for that.
    """
    users = g.consumers()
    for first in g.graph.node:
        p1 = _scale_param(g, first)
        if p1 is None:
            continue
        nxt = _sole_user(users, first.output[0], g)
        relu = None
        if nxt is not None and _is(nxt, "Relu"):
            relu, nxt = nxt, _sole_user(users, nxt.output[0], g)
        if nxt is None or _scale_param(g, nxt) is None or nxt.input[0] != (relu.output[0] if relu else first.output[0]):
            continue
        p2 = nxt.input[1]
        e = _pow2_exponent(g.params[p1]) + _pow2_exponent(g.params[p2])
        if not -126 <= e <= 127:
            continue
        merged = g.param("merged", 2.0**e)
        if relu is not None:
            relu.input[0] = first.input[0]
        else:
            nxt.input[0] = first.input[0]
        nxt.input[1] = merged
        g.graph.node.remove(first)
        return True
    return False


def _relu_into_clip(g: _Graph) -> bool:
    """``Relu -> Mul(2^a) -> Clip(lo, hi)`` becomes ``Mul(2^a) -> Clip(0, hi)`` (lo < 0 < hi).

    Exact for onnxruntime's kernels: negative inputs give +0 both ways, ``Relu(-0) * 2^a`` and
    ``Clip(-0 * 2^a, 0, hi)`` are both -0 (checked by the tests against plain sessions).
    """
    users = g.consumers()
    producers = g.producers()
    for relu in g.graph.node:
        if not _is(relu, "Relu"):
            continue
        mul = _sole_user(users, relu.output[0], g)
        if mul is None or _scale_param(g, mul) is None or mul.input[0] != relu.output[0]:
            continue
        # A scale below 1 could flush a tiny negative input to -0 where ReLU gives +0; integers
        # (a Round's output) cannot underflow.
        src = producers.get(relu.input[0])
        if _pow2_exponent(g.params[mul.input[1]]) < 0 and (src is None or not _is(src, "Round")):
            continue
        clip = _sole_user(users, mul.output[0], g)
        if clip is None or not _is(clip, "Clip") or len(clip.input) != 3 or clip.input[0] != mul.output[0]:
            continue
        lo, hi = g.value(clip.input[1]), g.value(clip.input[2])
        if lo is None or hi is None or not lo < 0 < hi:
            continue
        mul.input[0] = relu.input[0]
        clip.input[1] = g.param("relu_lo", 0.0)
        g.graph.node.remove(relu)
        return True
    return False


def _drop_double_round(g: _Graph) -> bool:
    """``Round -> Mul(2^k) -> Clip(lo, hi) -> Round`` with k >= 0 loses its second Round.

    The first Round gives integers, scaling by 2^k (k >= 0) keeps them integers, the bounds are
    integers, so the second Round changes nothing (Round(-0) is -0).
    """
    users = g.consumers()
    producers = g.producers()
    for clip in g.graph.node:
        if not _is(clip, "Clip") or len(clip.input) != 3:
            continue
        lo, hi = g.value(clip.input[1]), g.value(clip.input[2])
        if lo is None or hi is None or lo != math.floor(lo) or hi != math.floor(hi):
            continue
        mul = producers.get(clip.input[0])
        if mul is None or _scale_param(g, mul) is None or _pow2_exponent(g.params[mul.input[1]]) < 0:
            continue
        src = producers.get(mul.input[0])
        if src is None or not _is(src, "Round"):
            continue
        second = _sole_user(users, clip.output[0], g)
        if second is None or not _is(second, "Round") or second.output[0] in g.outputs:
            continue
        if any(second.output[0] in _subgraph_inputs(n) for n in users.get(second.output[0], [])):
            continue
        for node in users.get(second.output[0], []):
            for k, name in enumerate(node.input):
                if name == second.output[0]:
                    node.input[k] = clip.output[0]
        g.graph.node.remove(second)
        return True
    return False


def _fold_scale_into_weights(g: _Graph) -> bool:
    """``Mul(2^-f) -> Conv/Gemm/MatMul`` with constant weights: scale the weights instead.

    Exact: every product ``w * (k 2^-f)`` equals ``(w 2^-f) * k`` as a real number, so each one
    and every sum of them round identically, provided ``w 2^-f`` is itself exact (no value
    becomes subnormal or overflows; checked).
    """
    users = g.consumers()
    for mul in g.graph.node:
        p = _scale_param(g, mul)
        if p is None:
            continue
        layer = _sole_user(users, mul.output[0], g)
        if layer is None or layer.domain not in ("", "ai.onnx") or layer.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        if len(layer.input) < 2 or layer.input[0] != mul.output[0] or layer.input[1] == mul.output[0]:
            continue
        w_name = layer.input[1]
        if not g.constant(w_name):
            continue
        w = numpy_helper.to_array(g.inits[w_name])
        if w.dtype != np.float32:
            continue
        scaled = w * np.float32(g.params[p])
        nonzero = np.abs(scaled[w != 0])
        if nonzero.size and (not np.isfinite(nonzero).all() or nonzero.min() < np.finfo(np.float32).tiny):
            continue
        if not np.array_equal(scaled / np.float32(g.params[p]), w):
            continue
        name = f"{w_name}__x{_pow2_exponent(g.params[p])}"
        if name not in g.inits:
            g.graph.initializer.append(numpy_helper.from_array(scaled.astype(np.float32), name))
            g.inits[name] = g.graph.initializer[-1]
        layer.input[1] = name
        layer.input[0] = mul.input[0]
        g.graph.node.remove(mul)
        return True
    return False


def _prune_initializers(g: _Graph) -> None:
    used = set()
    for node in g.graph.node:
        used.update(node.input)
        used |= _subgraph_inputs(node)
    used |= g.outputs
    keep = [i for i in g.graph.initializer if i.name in used]
    del g.graph.initializer[:]
    g.graph.initializer.extend(keep)


def _publish_params(g: _Graph) -> dict[str, np.ndarray]:
    used = set()
    for node in g.graph.node:
        used.update(node.input)
    live = {k: v for k, v in g.params.items() if k in used}
    def array(name: str, value: float) -> np.ndarray:
        return np.array(value, helper.tensor_dtype_to_np_dtype(g.param_types[name]))

    if not g.parametric:
        g.graph.initializer.extend(numpy_helper.from_array(array(k, v), k) for k, v in live.items())
        return {}
    # Names of parameters depend on the order they were made; rename them by position in the
    # graph so equal structures get equal names (and keys) whatever rewrites happened.
    order: dict[str, str] = {}
    for node in g.graph.node:
        for k, name in enumerate(node.input):
            if name in live:
                if name not in order:
                    order[name] = f"{PARAM_PREFIX}{len(order)}"
                node.input[k] = order[name]
    for old, new in order.items():
        g.graph.input.append(helper.make_tensor_value_info(new, g.param_types[old], []))
    return {new: array(old, live[old]) for old, new in order.items()}


def lower(model: ModelProto, *, parametric: bool = True, weights: WeightCache | None = None) -> Lowered:
    """The exact, faster equivalent of the simulated ``model`` (see the module docstring)."""
    out = ModelProto()
    out.CopyFrom(model)
    g = _Graph(out, parametric)
    _constants_to_initializers(g)
    _drop_identities(g)
    _lower_quantizers(g, weights or WeightCache())
    rules = [_merge_scales, _relu_into_clip, _relu_into_quantize]
    if not parametric:
        # Both depend on the format values, so in parametric mode they would multiply the number
        # of graph structures (sessions) a search needs.
        rules += [_drop_double_round, _fold_scale_into_weights]
    for rule in rules:
        while rule(g):
            pass
    feeds = _publish_params(g)
    _prune_initializers(g)
    if any(is_quantize_sim(n) for n in out.graph.node):
        out = attach_functions(out)
    else:
        del out.functions[:]
    del out.metadata_props[:]  # the plan is recorded there; it must not split the cache
    key = hashlib.sha1(out.SerializeToString()).hexdigest()
    return Lowered(out, feeds, key)
