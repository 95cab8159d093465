"""Scalar number formats (thesis ch. 4-7) and their exact numpy reference quantizers.

:class:`Fixed` (ch. 4-5), :class:`UFixed` (unsigned, beyond the thesis), :class:`Minifloat` (ch. 6)
and :class:`Pow2` (ch. 7). Import them from :mod:`ristretto_onnx.formats`, which adds the
per-channel form, parsing and the reference ``quantize``; see that module for the semantics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np

from ristretto_onnx.errors import FormatError

#: Rounding modes: round half to even for inference, stochastic for fine-tuning.
ROUNDINGS = ("nearest_even", "stochastic")

# float32 normal range: steps and maxima of every accepted format must stay inside it, so the
# quantized values are exact float32 numbers and the scale factors are exact normal floats.
F32_EMIN = -126
F32_EMAX = 127


def _check_rounding(rounding: str) -> None:
    if rounding not in ROUNDINGS:
        raise FormatError(f"unknown rounding {rounding!r}; expected one of {', '.join(ROUNDINGS)}")


def _as_f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def _round(v: np.ndarray, rounding: str, rng: np.random.Generator | None) -> np.ndarray:
    """Round float64 values to integers: half to even, or stochastically (floor(v + u))."""
    if rounding == "nearest_even":
        return np.rint(v)
    rng = rng if rng is not None else np.random.default_rng(0)
    return np.floor(v + rng.random(v.shape))


class _Grid:
    """What signed and unsigned fixed point share: values on the grid ``k * 2**-frac_bits``."""

    bits: int
    frac_bits: int

    def _check_float32(self, top_exp: int, lowest_frac: int) -> None:
        """Step and largest value must be normal float32 numbers (exact scale factors)."""
        if -self.frac_bits < F32_EMIN or top_exp > F32_EMAX:
            raise FormatError(
                f"{self}: range exceeds float32 (step 2^{-self.frac_bits}, max about 2^{top_exp}); "
                f"frac_bits must lie in [{lowest_frac}, {-F32_EMIN}]"
            )

    @property
    def int_bits(self) -> int:
        """Integer length IL of the thesis (signed: sign bit included; bits = IL + FL)."""
        return self.bits - self.frac_bits

    @property
    def step(self) -> float:
        return 2.0 ** -self.frac_bits

    @property
    def smallest_positive(self) -> float:
        return self.step


@dataclass(frozen=True)
class Fixed(_Grid):
    """Two's complement fixed point with ``bits`` bits in total, ``frac_bits`` of them fractional.

    The thesis's ``Qm.n`` is ``Fixed(m + n, n)``. ``frac_bits`` may be negative (a step larger
    than 1) or larger than ``bits`` (all bits below the binary point), which dynamic fixed point
    needs for small weights. Values: ``k * 2**-frac_bits`` for integer ``k`` in
    ``[-2**(bits-1), 2**(bits-1) - 1]``.
    """

    bits: int
    frac_bits: int
    kind: ClassVar[str] = "fixed"

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 32:
            raise FormatError(f"fixed point needs 2 to 32 bits, got {self.bits}")
        self._check_float32(self.bits - 1 - self.frac_bits, self.bits - 1 - F32_EMAX)

    def __str__(self) -> str:
        return f"fixed:{self.bits}:{self.frac_bits}"

    @property
    def max_value(self) -> float:
        return float(np.float32((2.0 ** (self.bits - 1) - 1) * self.step))

    @property
    def min_value(self) -> float:
        return -(2.0 ** (self.bits - 1)) * self.step

    def quantize(self, x, rounding: str = "nearest_even", rng=None) -> np.ndarray:
        _check_rounding(rounding)
        return _quantize_fixed(_as_f64(x), self.bits, self.frac_bits, rounding, rng)


def _quantize_fixed(x64: np.ndarray, bits: int, frac_bits, rounding: str, rng) -> np.ndarray:
    """Fixed point in float64; ``frac_bits`` may be an array broadcast against ``x64``."""
    return _quantize_grid(x64, frac_bits, -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1, rounding, rng)


def _quantize_grid(x64: np.ndarray, frac_bits, lo: float, hi: float, rounding: str, rng) -> np.ndarray:
    """``clip(round(x * 2**F), lo, hi) * 2**-F`` in float64, rounded once to float32."""
    scale = np.ldexp(1.0, frac_bits)
    k = np.clip(_round(x64 * scale, rounding, rng), lo, hi)
    if lo == 0.0:
        k = k + 0.0  # unsigned: -0 -> +0
    return (k / scale).astype(np.float32)


@dataclass(frozen=True)
class UFixed(_Grid):
    """Unsigned fixed point: ``k * 2**-frac_bits`` for integer ``k`` in ``[0, 2**bits - 1]``.

    Beyond the thesis (two's complement everywhere): a tensor that cannot be negative (after a
    ReLU, a softmax, an input in [0, 1]) wastes its sign bit in ``fixed``; ``ufixed:B:F`` spends
    it on range, as uint8 activations do in onnxruntime. On non-negative values ``ufixed:B:F``
    equals ``fixed:B+1:F``. Negative values saturate to 0 (+0, never -0): quantizing a layer
    output that only a ReLU reads therefore already applies the ReLU.
    """

    bits: int
    frac_bits: int
    kind: ClassVar[str] = "ufixed"

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 31:
            raise FormatError(f"unsigned fixed point needs 1 to 31 bits, got {self.bits}")
        self._check_float32(self.bits - self.frac_bits, self.bits - F32_EMAX)

    def __str__(self) -> str:
        return f"ufixed:{self.bits}:{self.frac_bits}"

    @property
    def max_value(self) -> float:
        return float(np.float32((2.0**self.bits - 1) * self.step))

    @property
    def min_value(self) -> float:
        return 0.0

    def quantize(self, x, rounding: str = "nearest_even", rng=None) -> np.ndarray:
        _check_rounding(rounding)
        return _quantize_grid(_as_f64(x), self.frac_bits, 0.0, 2.0**self.bits - 1, rounding, rng)


@dataclass(frozen=True)
class Minifloat:
    """Floating point with 1 sign bit, ``exp_bits`` exponent bits and the rest mantissa (ch. 6).

    bias = 2**(E-1) - 1. There are no denormals, infinities or NaNs: every exponent code
    1 .. 2**E - 1 is a normal number, values beyond the largest saturate to it, values below the
    smallest normal flush to zero (keeping their sign, as float zeros do).
    """

    bits: int
    exp_bits: int
    kind: ClassVar[str] = "minifloat"

    def __post_init__(self) -> None:
        if self.bits < 2 or self.bits > 32:
            raise FormatError(f"minifloat needs 2 to 32 bits, got {self.bits}")
        if self.exp_bits < 1:
            raise FormatError(f"minifloat needs at least 1 exponent bit, got {self.exp_bits}")
        if self.mant_bits < 0:
            raise FormatError(
                f"minifloat:{self.bits}:{self.exp_bits}: {self.exp_bits} exponent bits leave no room "
                f"for the sign bit (mantissa bits = bits - 1 - exp_bits must be >= 0)"
            )
        if self.mant_bits > 23:
            raise FormatError(f"{self}: {self.mant_bits} mantissa bits exceed float32's 23")
        if self.exp_bits > 8 or self.emax > F32_EMAX or self.emin < F32_EMIN:
            raise FormatError(
                f"{self}: exponent range 2^{self.emin}..2^{self.emax} exceeds float32's normal range"
            )

    def __str__(self) -> str:
        return f"minifloat:{self.bits}:{self.exp_bits}"

    @property
    def mant_bits(self) -> int:
        return self.bits - 1 - self.exp_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def emax(self) -> int:
        return 2**self.exp_bits - 1 - self.bias

    @property
    def max_value(self) -> float:
        return (2.0 - 2.0 ** -self.mant_bits) * 2.0**self.emax

    @property
    def min_value(self) -> float:
        return -self.max_value

    @property
    def smallest_positive(self) -> float:
        return 2.0**self.emin

    @property
    def step(self) -> float:
        """The finest step (between the smallest normals)."""
        return 2.0 ** (self.emin - self.mant_bits)

    def quantize(self, x, rounding: str = "nearest_even", rng=None) -> np.ndarray:
        _check_rounding(rounding)
        x64 = _as_f64(x)
        _, ex = np.frexp(np.abs(x64))  # |x| = m * 2**ex, m in [0.5, 1): floor(log2|x|) = ex - 1
        e = np.maximum(ex - 1, self.emin)
        q = np.ldexp(_round(np.ldexp(x64, self.mant_bits - e), rounding, rng), e - self.mant_bits)
        q = np.clip(q, -self.max_value, self.max_value)
        q = np.where(np.abs(q) < self.smallest_positive, q * 0.0, q)
        return q.astype(np.float32)


@dataclass(frozen=True)
class Pow2:
    """Power-of-two weights for multiplier-free layers (ch. 7): 0 or ``±2**e``, EMIN <= e <= EMAX.

    A product with such a weight is a shift. The exponent is the nearest integer to log2|x|
    (rounded in the log domain), clipped to the range; only an exact zero stays zero (+0, for
    either sign of zero).
    """

    exp_min: int
    exp_max: int
    kind: ClassVar[str] = "pow2"

    def __post_init__(self) -> None:
        if self.exp_min > self.exp_max:
            raise FormatError(f"pow2:{self.exp_min}:{self.exp_max}: EMIN must not exceed EMAX")
        # One binade of headroom on each side keeps every threshold the op compares with a
        # normal float32 number.
        if self.exp_min < F32_EMIN + 1 or self.exp_max > F32_EMAX - 1:
            raise FormatError(
                f"{self}: exponents must lie in [{F32_EMIN + 1}, {F32_EMAX - 1}] (float32 range)"
            )

    def __str__(self) -> str:
        return f"pow2:{self.exp_min}:{self.exp_max}"

    @property
    def bits(self) -> int:
        """Sign bit plus enough bits to index the exponents (the thesis's 4-bit ``pow2:-8:-1``)."""
        return 1 + math.ceil(math.log2(self.exp_max - self.exp_min + 1))

    @property
    def max_value(self) -> float:
        return 2.0**self.exp_max

    @property
    def min_value(self) -> float:
        return -(2.0**self.exp_max)

    @property
    def smallest_positive(self) -> float:
        return 2.0**self.exp_min

    @property
    def step(self) -> float:
        return 2.0**self.exp_min

    def quantize(self, x, rounding: str = "nearest_even", rng=None) -> np.ndarray:
        _check_rounding(rounding)
        return _quantize_pow2(_as_f64(x), self.exp_min, self.exp_max, rounding, rng)


def _quantize_pow2(x64: np.ndarray, exp_min, exp_max, rounding: str, rng) -> np.ndarray:
    """Power-of-two quantization in float64; the exponent bounds may be broadcast arrays."""
    a = np.abs(x64)
    _, ex = np.frexp(a)
    f = (ex - 1).astype(np.float64)  # floor(log2 a)
    lower = np.ldexp(1.0, ex - 1)
    if rounding == "nearest_even":
        # log2 a rounds up past f + 1/2, i.e. at sqrt(2) * 2**f; never a tie for float32 a.
        up = a >= np.sqrt(2.0) * lower
    else:
        # Unbiased in value: up with probability (a - 2**f) / 2**f.
        rng = rng if rng is not None else np.random.default_rng(0)
        up = rng.random(a.shape) < (a / lower - 1.0)
    k = np.where(np.isinf(a), exp_max, np.clip(f + up, exp_min, exp_max))
    q = np.ldexp(1.0, np.asarray(k).astype(np.int64))
    q = np.where(x64 < 0, -q, q)
    q = np.where(x64 == 0, 0.0, q)  # both zeros give +0 (onnxruntime's Sign has no -0)
    q = np.where(np.isnan(x64), np.nan, q)
    return q.astype(np.float32)


