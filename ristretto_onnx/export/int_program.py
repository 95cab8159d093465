"""The integer program: a dynamic fixed point network as an accelerator computes it.

The simulated model (thesis fig. 2.9) quantizes layer inputs, weights and outputs but multiplies
and accumulates in float32. An accelerator (thesis 5.1, fig. 5.1) instead multiplies the integer
mantissas, sums them in a wide adder tree, adds the bias in the accumulator's fixed point (FL of
the input plus FL of the weights) and re-quantizes the sum to the output format with a shift.
This module describes that computation once, as a list of :class:`Step` on integer tensors,
so that the ONNX integer model (:mod:`.integer`) and the C golden model (:mod:`.c_model`, thesis
9.7.3) are two renderings of one program and agree by construction.

Every integer tensor holds ``k`` with value ``k * 2**-frac / div``: ``frac`` is the fractional
length (one per channel for an accumulator of per-channel weights) and ``div`` a positive integer
that an average pool leaves behind when its window is not a power of two (it is folded into the
next re-quantization, an exact rounded division). ``lo``/``hi`` bound ``k`` and size the types.

Re-quantization of ``k`` (fraction ``f``) to ``fixed:B:F`` is ``v = k * L`` followed by the
round-half-even division ``q = rne(v / D)`` with ``L = 2**max(0, F - f)`` and
``D = 2**max(0, f - F) * div``, then saturation to ``[-2**(B-1), 2**(B-1) - 1]``: the shift of
the data path. :func:`rne_div` is the reference both renderings follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Step kinds, in the words of the data path.
STEP_KINDS = (
    "quantize",   # float input -> integer (the first layer's input quantizer)
    "conv",       # integer conv with the bias in the accumulator's fixed point -> accumulator
    "fc",         # integer matrix-vector product (Gemm / MatMul) with the bias -> accumulator
    "requant",    # rne(k * L / D), saturated: the output shift (per channel where L, D are)
    "relu",       # max(k, 0)
    "clip",       # clamp to integer bounds (ReLU6 at the tensor's fixed point)
    "maxpool",    # window maximum
    "sumpool",    # window sum (average pool: the division is folded into frac/div)
    "add",        # a * La + b * Lb: residual Add of tensors aligned by left shifts
    "addconst",   # k + c (a constant in the tensor's fixed point, broadcast along channels)
    "concat",     # inputs aligned by left shifts, joined along an axis
    "reshape",    # a new per-sample shape for the same values (Flatten, Reshape)
    "slice",      # strided window (a ResNet option-A shortcut's subsampling)
    "pad",        # zero padding (a ResNet option-A shortcut's extra channels)
    "dequantize", # integer -> float32: k * 2**-frac / div (graph outputs, float tails)
    "float",      # an original float node (ONNX rendering only: before/after the integer path)
)


@dataclass
class Tensor:
    """An integer tensor of the program (per-sample ``shape``: the batch dimension is left out).

    ``frac`` is an int array: shape ``()`` for one fractional length, ``(C,)`` for one per
    channel (per-sample axis 0). ``acc`` marks accumulators (64-bit in C, int64 in ONNX).
    """

    name: str
    shape: tuple[int, ...]
    frac: np.ndarray
    lo: int
    hi: int
    div: int = 1
    acc: bool = False

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def per_channel(self) -> bool:
        return self.frac.ndim == 1 and len(np.unique(self.frac)) > 1

    @property
    def scalar_frac(self) -> int:
        return int(np.unique(self.frac)[0])

    def fits(self, lo: int, hi: int) -> bool:
        return lo <= self.lo and self.hi <= hi


@dataclass
class Step:
    """One operation of the program: ``kind`` (see :data:`STEP_KINDS`), tensor names, attributes."""

    kind: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    node: str = ""  # the simulated model's node this step comes from (for messages and reports)


@dataclass
class LayerNote:
    """What the integer data path of one layer looks like and where it can differ from the sim."""

    layer: str
    op: str
    input_bits: int
    weight_bits: int
    acc_frac: list[int]  # fractional length of the products' sum, FL_in + FL_w (per channel)
    sum_bits: int  # width of the adder tree: the largest possible |sum of products|
    guard_bits: int  # fractional bits added below the products' grid so the bias is exact
    acc_bits: int  # width after the bias add
    bias: str  # "none", "exact" (on the accumulator grid) or "rounded" (rne'd onto it)
    shift: list[int]  # right shift of the output re-quantization per channel (negative: left)
    float32_exact_sum: bool  # every partial sum of products stays below 2**24 steps: exact in float32
    float32_exact: bool  # the sum plus the bias stays below 2**24 steps of the guarded grid: the
    #                      float32 simulation computes this layer exactly (else it may round)


@dataclass
class Program:
    """The integer program of a simulated model."""

    input_name: str
    input_shape: tuple[int, ...]
    output_names: list[str]
    steps: list[Step]
    tensors: dict[str, Tensor]
    float_inits: dict[str, np.ndarray]
    notes: list[LayerNote]

    def integer_only(self) -> bool:
        return not any(s.kind == "float" for s in self.steps)


def rne_div(v: np.ndarray, d) -> np.ndarray:
    """Round-half-even integer division ``rne(v / d)`` for int64 ``v`` and positive int ``d``."""
    v = np.asarray(v, dtype=np.int64)
    d = np.asarray(d, dtype=np.int64)
    q = np.floor_divide(v, d)
    r2 = 2 * (v - q * d)
    up = (r2 > d) | ((r2 == d) & (q % 2 == 1))
    return q + up.astype(np.int64)


def shift_factors(frac_in: np.ndarray, frac_out: int, div: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(L, D)`` of the re-quantization from ``frac_in`` (per channel or not) to ``frac_out``."""
    f = np.asarray(frac_in, dtype=np.int64)
    left = np.maximum(0, frac_out - f)
    right = np.maximum(0, f - frac_out)
    if np.any(left > 62) or np.any(right > 62):
        raise ValueError(f"shift by {int(np.max(np.abs(f - frac_out)))} bits exceeds 62")
    return (np.left_shift(np.int64(1), left).astype(np.int64),
            np.left_shift(np.int64(1), right).astype(np.int64) * np.int64(div))


def bits_of(lo: int, hi: int) -> int:
    """Two's complement width that holds ``[lo, hi]``."""
    need = max(int(hi), -int(lo) - 1, 0)
    return need.bit_length() + 1


# ---- what a tensor of the simulated model holds while it is lowered (int_lower, int_ops)

class Const:
    """A float constant (initializer or Constant node)."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = value


class QConst:
    """Quantized constant: ``value = k * 2**-frac`` (``frac`` broadcast against ``k``)."""

    def __init__(self, k: np.ndarray, frac: np.ndarray, bits: int, axis: int | None, fmt: str) -> None:
        self.k, self.frac, self.bits, self.axis, self.fmt = k, frac, bits, axis, fmt

    @property
    def value(self) -> np.ndarray:
        return self.k * np.ldexp(1.0, -self.frac)


class FloatT:
    """A float tensor of the output graph."""

    def __init__(self, name: str, shape: tuple[int, ...] | None) -> None:
        self.name, self.shape = name, shape


def acc_note(layer: str, op: str, x: Tensor, w: QConst, bias_exact: str, bound_sum: np.ndarray,
             bound: np.ndarray, facc: np.ndarray, guard: int) -> LayerNote:
    """The note of one layer's accumulator: operand, sum and accumulator widths (thesis 5.1)."""
    return LayerNote(layer, op, bits_of(x.lo, x.hi), w.bits, [int(f) for f in facc],
                     bits_of(-int(bound_sum.max()), int(bound_sum.max())), guard,
                     bits_of(-int(bound.max()), int(bound.max())), bias_exact, [],
                     bool(bound_sum.max() < 2**24), bool(bound.max() < 2**24 and bias_exact != "rounded"))
