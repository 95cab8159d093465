"""Integer forms of the simulated model's nodes (thesis 5.1): layers, pools, residual adds, concat.

Each handler takes the :class:`~ristretto_onnx.export.int_lower.Lowering` and the states of the
node's inputs, appends the program steps and returns the output tensor, or ``None`` when the
node has no integer form (it then runs in float on dequantized inputs, which only the ONNX
rendering allows). Exactness rules:

* a layer multiplies integer inputs and weights; the products sum at ``FL_in + FL_w`` fractional
  bits (per output channel with per-channel weights). The bias is added in the accumulator's fixed
  point: by default the accumulator gets the fewest extra fractional (guard) bits that hold the
  bias exactly (a float32 bias needs up to 24 more; a quantized bias with ``FL_b <= FL_acc`` none),
  so the result is the exact ``sum + bias`` that the float32 simulation approximates;
  ``exact_bias=False`` rounds the bias half-to-even onto the product grid instead (an int32
  accumulator with no guard bits: cheaper, and up to half a step off before the output shift);
* tensors meeting in an Add or a Concat are aligned to the larger fractional length by left
  shifts (exact); ReLU6 bounds off the grid raise the fractional length until they are on it;
* an average pool is a window sum; its division is folded into the next re-quantization
  (a power-of-two window adds to the fractional length).
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.export.int_program import Const, FloatT, QConst, Tensor, acc_note

INT32 = (-(2**31), 2**31 - 1)
#: At most this many fractional bits below the accumulator's grid for an exact bias.
MAX_GUARD = 32


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fail(node, why: str) -> RistrettoError:
    return RistrettoError(f"integer export: node {node.name!r} ({node.op_type}): {why}")


def lower_int_op(lw, node, ins):
    handler = _HANDLERS.get(node.op_type)
    if handler is None:
        return None
    return handler(lw, node, ins)


def _int_input(lw, node, s, what: str, *, scalar=True, nodiv=True) -> Tensor:
    if not isinstance(s, Tensor):
        kind = "float" if isinstance(s, FloatT) else "a constant"
        raise _fail(node, f"its {what} is {kind}; the integer model needs quantized layer inputs "
                          "(quantize inputs, weights and outputs of every layer)")
    if scalar and s.per_channel:
        raise _fail(node, f"its {what} has per-channel fractional lengths (a layer output left unquantized?)")
    if nodiv and s.div != 1:
        raise _fail(node, f"its {what} is an average that was not re-quantized")
    return s


def _layer_name(lw, node) -> str:
    return lw.layer_of.get(node.name, node.name or node.output[0])


def _bias_value(node, bias_state, m: int) -> np.ndarray:
    if bias_state is None:
        return np.zeros(m)
    if not isinstance(bias_state, (Const, QConst)):
        raise _fail(node, "its bias is not a constant")
    b = np.asarray(bias_state.value, dtype=np.float32).astype(np.float64)
    if b.size not in (1, m):
        raise _fail(node, f"its bias has {b.size} values for {m} output channels")
    return np.broadcast_to(b.reshape(-1), (m,))


def _guard_bits(b: np.ndarray, facc: np.ndarray, bound_sum: int, exact: bool) -> int:
    """Fractional bits added below the accumulator's grid so that the bias lands on it exactly."""
    if not exact:
        return 0
    for g in range(MAX_GUARD + 1):
        if bound_sum * 2**g + np.abs(b).max() * 2.0 ** (facc.max() + g) >= 2**51:
            return max(g - 1, 0)
        scaled = np.ldexp(b, facc + g)
        if np.array_equal(scaled, np.rint(scaled)):
            return g
    return MAX_GUARD


def _weights(node, w) -> np.ndarray:
    if not isinstance(w, QConst):
        raise _fail(node, "its weights are float; the integer model needs quantized weights")
    return w.k


def _layer(lw, node, x: Tensor, w, bias_state, wmat: np.ndarray, out_shape, kind: str, attrs: dict) -> Tensor:
    if not x.fits(-(2**15), 2**15 - 1):
        raise _fail(node, f"its inputs need more than 16 bits ([{x.lo}, {x.hi}])")
    m = wmat.shape[0]
    wfrac = np.broadcast_to(np.asarray(w.frac).reshape(-1) if w.axis is not None else w.frac, (m,))
    facc = x.scalar_frac + wfrac.astype(np.int64)
    bound_sum = np.abs(wmat.reshape(m, -1)).sum(axis=1) * max(abs(x.lo), abs(x.hi))
    if bound_sum.max() > INT32[1]:
        raise _fail(node, f"its int32 accumulator could overflow (sum bound {int(bound_sum.max())})")
    b = _bias_value(node, bias_state, m)
    guard = _guard_bits(b, facc, int(bound_sum.max()), lw.exact_bias)
    scaled = np.ldexp(b, facc + guard)
    bias = np.rint(scaled).astype(np.int64)
    exact = "none" if bias_state is None else "exact" if np.array_equal(scaled, bias) else "rounded"
    bound = (bound_sum << guard) + np.abs(bias)
    out = lw.new_tensor(node.output[0], out_shape, facc + guard, -int(bound.max()), int(bound.max()), acc=True)
    lw.emit(kind, [x.name], out, node.name, w=wmat.astype(np.int64), w_bits=w.bits, bias=bias,
            guard=guard, **attrs)
    lw.notes[out.name] = acc_note(_layer_name(lw, node), node.op_type, x, w, exact, bound_sum, bound,
                                  facc, guard)
    return out


def _check_axis(node, w, want: int) -> None:
    if w.axis is not None and w.axis != want:
        raise _fail(node, f"its per-channel weights are split along axis {w.axis}, not the output axis {want}")


def conv(lw, node, ins) -> Tensor:
    a = _attrs(node)
    x = _int_input(lw, node, ins[0], "input")
    w = ins[1]
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise _fail(node, "auto_pad SAME is not supported; export with explicit pads")
    if len(x.shape) != 3:
        raise _fail(node, f"only 2-D convolutions are supported (input shape {x.shape})")
    wk = _weights(node, w)
    _check_axis(node, w, 0)
    m, cg, kh, kw = wk.shape
    group = int(a.get("group", 1))
    strides = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    c, h, wd = x.shape
    if cg * group != c or m % group:
        raise _fail(node, f"weights {wk.shape} do not match {c} input channels in {group} groups")
    oh = (h + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    bias = ins[2] if len(ins) > 2 else None
    return _layer(lw, node, x, w, bias, wk, (m, oh, ow), "conv",
                  dict(strides=strides, pads=pads, dilations=dil, group=group, kernel=[kh, kw]))


def fc(lw, node, ins) -> Tensor:
    a = _attrs(node)
    x = _int_input(lw, node, ins[0], "input")
    w = ins[1]
    if len(x.shape) != 1:
        raise _fail(node, f"only (batch, K) inputs are supported (per-sample shape {x.shape})")
    if node.op_type == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise _fail(node, "only Gemm with transA=0, alpha=1, beta=1 is supported")
        out_axis = 0 if a.get("transB", 0) else 1
    else:
        out_axis = 1
    wk = _weights(node, w)
    _check_axis(node, w, out_axis)
    wmat = wk if out_axis == 0 else wk.T
    if wmat.shape[1] != x.shape[0]:
        raise _fail(node, f"weights {wk.shape} do not match {x.shape[0]} inputs")
    bias = ins[2] if len(ins) > 2 and node.op_type == "Gemm" else None
    return _layer(lw, node, x, w, bias, wmat, (wmat.shape[0],), "fc", {})


def relu(lw, node, ins) -> Tensor:
    x = _int_input(lw, node, ins[0], "input", scalar=False, nodiv=False)
    out = lw.new_tensor(node.output[0], x.shape, x.frac, max(x.lo, 0), max(x.hi, 0), div=x.div, acc=x.acc)
    lw.emit("relu", [x.name], out, node.name)
    return out


def clip(lw, node, ins) -> Tensor:
    x = _int_input(lw, node, ins[0], "input")
    a = _attrs(node)
    bounds = [a.get("min", -np.inf), a.get("max", np.inf)]
    for i in (1, 2):
        if len(ins) > i and ins[i] is not None:
            if not isinstance(ins[i], Const):
                raise _fail(node, "its bounds are not constants")
            bounds[i - 1] = float(np.asarray(ins[i].value).reshape(()))
    frac = x.scalar_frac
    for b in bounds:  # raise the fractional length until the bounds are on the grid
        while math.isfinite(b) and not float(np.ldexp(b, frac)).is_integer():
            frac += 1
    if frac - x.scalar_frac > 24:
        raise _fail(node, f"its bounds {bounds} are not on a fixed point grid")
    x = lw.requant(x, frac, *INT32, node.output[0], node.name)
    lo = x.lo if not math.isfinite(bounds[0]) else int(np.ldexp(bounds[0], frac))
    hi = x.hi if not math.isfinite(bounds[1]) else int(np.ldexp(bounds[1], frac))
    out = lw.new_tensor(node.output[0], x.shape, frac, min(max(x.lo, lo), hi), max(min(x.hi, hi), lo))
    lw.emit("clip", [x.name], out, node.name, lo=lo, hi=hi)
    return out


def _window(node, x: Tensor, a: dict, kernel, *, ceil_ok: bool = False) -> dict:
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise _fail(node, "auto_pad SAME is not supported")
    ceil = bool(a.get("ceil_mode", 0))
    if ceil and not ceil_ok:
        raise _fail(node, "ceil_mode=1 is not supported for average pooling (edge windows have other divisors)")
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise _fail(node, "dilated pooling is not supported")
    if len(x.shape) != 3:
        raise _fail(node, f"only 2-D pooling is supported (input shape {x.shape})")
    strides = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    out = [x.shape[0]]
    for i in (0, 1):
        span = x.shape[1 + i] + pads[i] + pads[2 + i] - kernel[i]
        o = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        if ceil and (o - 1) * strides[i] >= x.shape[1 + i] + pads[i]:
            o -= 1  # the last window must start inside the input or its leading padding
        out.append(o)
    return dict(kernel=list(kernel), strides=strides, pads=pads, shape=tuple(out), ceil=ceil)


def maxpool(lw, node, ins) -> Tensor:
    x = _int_input(lw, node, ins[0], "input", scalar=False, nodiv=False)
    if len(node.output) > 1 and node.output[1]:
        raise _fail(node, "MaxPool indices are not supported")
    a = _attrs(node)
    kernel = list(a["kernel_shape"]) if node.op_type == "MaxPool" else list(x.shape[1:])
    win = _window(node, x, a, kernel, ceil_ok=True)
    out = lw.new_tensor(node.output[0], win.pop("shape"), x.frac, x.lo, x.hi, div=x.div, acc=x.acc)
    lw.emit("maxpool", [x.name], out, node.name, **win)
    return out


def avgpool(lw, node, ins) -> Tensor:
    x = _int_input(lw, node, ins[0], "input", nodiv=False)
    a = _attrs(node)
    kernel = list(a["kernel_shape"]) if node.op_type == "AveragePool" else list(x.shape[1:])
    win = _window(node, x, a, kernel)
    if any(win["pads"]) and not a.get("count_include_pad", 0):
        raise _fail(node, "padded average pooling needs count_include_pad=1 (one divisor for all windows)")
    count = kernel[0] * kernel[1]
    twos = (count & -count).bit_length() - 1  # count = 2**twos * odd: the power of two is a shift
    frac, div = x.scalar_frac + twos, x.div * (count >> twos)
    lo, hi = min(x.lo, 0) * count, max(x.hi, 0) * count
    out = lw.new_tensor(node.output[0], win.pop("shape"), frac, lo, hi, div=div)
    lw.emit("sumpool", [x.name], out, node.name, **win)
    return out


def add(lw, node, ins):
    consts = [s for s in ins if isinstance(s, (Const, QConst))]
    if consts:
        x = _int_input(lw, node, next(s for s in ins if isinstance(s, Tensor)), "input", scalar=False)
        c = np.asarray(consts[0].value, dtype=np.float32).astype(np.float64)
        chans = x.shape[0] if x.shape else 1
        if c.size == 1:
            c = np.broadcast_to(c.reshape(-1), (chans,))
        elif c.size == chans and c.reshape(-1).shape[0] == chans and (c.ndim <= 1 or c.shape[-len(x.shape):][0] == chans):
            c = c.reshape(-1)
        else:
            return None
        fr = np.broadcast_to(x.frac, (chans,))
        k = np.rint(np.ldexp(c, fr))
        exact = np.array_equal(k, np.ldexp(c, fr))
        bound = int(np.abs(k).max())
        out = lw.new_tensor(node.output[0], x.shape, x.frac, x.lo - bound, x.hi + bound, acc=x.acc)
        lw.emit("addconst", [x.name], out, node.name, c=k.astype(np.int64))
        if x.name in lw.notes:
            note = lw.notes.pop(x.name)
            note.bias = "exact" if exact else "rounded"
            lw.notes[out.name] = note
        return out
    a = _int_input(lw, node, ins[0], "first input", nodiv=False)
    b = _int_input(lw, node, ins[1], "second input", nodiv=False)
    if a.shape != b.shape:
        raise _fail(node, f"broadcasting Add of {a.shape} and {b.shape} is not supported")
    frac, div, (la, lb) = _align([a, b])
    out = lw.new_tensor(node.output[0], a.shape, frac, a.lo * la + b.lo * lb, a.hi * la + b.hi * lb, div=div)
    lw.emit("add", [a.name, b.name], out, node.name, la=la, lb=lb)
    return out


def _align(xs: list[Tensor]) -> tuple[int, int, list[int]]:
    """Common fraction and divisor of tensors and each one's exact integer multiplier."""
    frac = max(x.scalar_frac for x in xs)
    div = math.lcm(*(x.div for x in xs))
    return frac, div, [(1 << (frac - x.scalar_frac)) * (div // x.div) for x in xs]


def concat(lw, node, ins) -> Tensor:
    xs = [_int_input(lw, node, s, f"input {i}", nodiv=False) for i, s in enumerate(ins)]
    axis = int(_attrs(node)["axis"])
    rank = len(xs[0].shape) + 1
    axis = axis + rank if axis < 0 else axis
    if axis < 1:
        raise _fail(node, "concatenation along the batch axis is not supported")
    frac, div, mults = _align(xs)
    shape = list(xs[0].shape)
    shape[axis - 1] = sum(x.shape[axis - 1] for x in xs)
    out = lw.new_tensor(node.output[0], shape, frac, min(x.lo * m for x, m in zip(xs, mults)),
                        max(x.hi * m for x, m in zip(xs, mults)), div=div)
    lw.emit("concat", [x.name for x in xs], out, node.name, axis=axis - 1, mults=mults)
    return out


def reshape(lw, node, ins):
    x = _int_input(lw, node, ins[0], "input", scalar=False, nodiv=False)
    if x.per_channel:
        return None
    size = x.size
    if node.op_type == "Flatten":
        if int(_attrs(node).get("axis", 1)) != 1:
            return None
        shape = [size]
    else:
        if len(ins) < 2 or not isinstance(ins[1], Const):
            return None
        target = [int(v) for v in np.asarray(ins[1].value).reshape(-1)]
        if not target or target[0] not in (0, -1) or target[1:].count(-1) > (target[0] == 0):
            return None
        shape = [x.shape[i - 1] if v == 0 else v for i, v in enumerate(target)][1:]
        if -1 in shape:
            known = int(np.prod([v for v in shape if v != -1]))
            shape[shape.index(-1)] = size // max(known, 1)
        if int(np.prod(shape)) != size:
            return None
    out = lw.new_tensor(node.output[0], shape, x.frac, x.lo, x.hi, div=x.div, acc=x.acc)
    lw.emit("reshape", [x.name], out, node.name, shape=list(shape))
    return out


def slice_(lw, node, ins):
    x = _int_input(lw, node, ins[0], "input", scalar=False, nodiv=False)
    if any(not isinstance(v, Const) for v in ins[1:] if v is not None):
        return None
    vals = [None if v is None else [int(i) for i in np.asarray(v.value).reshape(-1)] for v in ins[1:]]
    starts, ends = vals[0], vals[1]
    rank = len(x.shape) + 1
    axes = vals[2] if len(vals) > 2 and vals[2] is not None else list(range(len(starts)))
    steps = vals[3] if len(vals) > 3 and vals[3] is not None else [1] * len(starts)
    start, step, shape = [0] * len(x.shape), [1] * len(x.shape), list(x.shape)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = ax + rank if ax < 0 else ax
        if ax == 0:
            return None
        idx = range(*slice(st, en, sp).indices(x.shape[ax - 1]))
        if len(idx) == 0:
            raise _fail(node, "the slice is empty")
        start[ax - 1], step[ax - 1], shape[ax - 1] = idx.start, idx.step, len(idx)
    if x.per_channel and (start[0], step[0], shape[0]) != (0, 1, x.shape[0]):
        return None
    out = lw.new_tensor(node.output[0], shape, x.frac, x.lo, x.hi, div=x.div, acc=x.acc)
    lw.emit("slice", [x.name], out, node.name, start=start, step=step)
    return out


def pad(lw, node, ins):
    x = _int_input(lw, node, ins[0], "input")
    mode = _attrs(node).get("mode", b"constant")
    if mode not in (b"constant", "constant") or len(ins) < 2 or not isinstance(ins[1], Const):
        return None
    if len(ins) > 2 and ins[2] is not None and (not isinstance(ins[2], Const)
                                                or float(np.asarray(ins[2].value).reshape(-1)[0]) != 0.0):
        return None
    if len(ins) > 3 and ins[3] is not None:
        return None
    p = [int(v) for v in np.asarray(ins[1].value).reshape(-1)]
    rank = len(x.shape) + 1
    begin, end = p[:rank], p[rank:]
    if begin[0] or end[0] or min(p) < 0:
        return None
    shape = [d + b + e for d, b, e in zip(x.shape, begin[1:], end[1:])]
    out = lw.new_tensor(node.output[0], shape, x.frac, min(x.lo, 0), max(x.hi, 0))
    lw.emit("pad", [x.name], out, node.name, begin=begin[1:], end=end[1:])
    return out


_HANDLERS = {
    "Slice": slice_, "Pad": pad,
    "Conv": conv, "Gemm": fc, "MatMul": fc, "Relu": relu, "Clip": clip,
    "MaxPool": maxpool, "GlobalMaxPool": maxpool, "AveragePool": avgpool, "GlobalAveragePool": avgpool,
    "Add": add, "Concat": concat, "Flatten": reshape, "Reshape": reshape,
}
