"""Number formats of the thesis (ch. 4-7) and their exact numpy reference quantizers.

Every format is a frozen dataclass with a string form (``fixed:8:4``, ``minifloat:8:5``,
``pow2:-8:-1``) that is used everywhere: the CLI, reports and the ``format`` attribute of the
``QuantizeSim`` op. :func:`parse_format` is the inverse of ``str()``.

The numpy quantizers here are the *reference semantics*: the onnxruntime function bodies in
:mod:`ristretto_onnx.ops` must reproduce them bit for bit on float32. They compute in float64,
where every intermediate step is exact, and round once to float32 at the end; the formats are
restricted (see each ``__post_init__``) so that this last rounding is exact too.

Dynamic fixed point is not a separate format: it is :class:`Fixed` with the fractional length
chosen per group of numbers (a layer's weights, inputs or outputs), by the range rules of
:mod:`ristretto_onnx.range_rules`.
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


@dataclass(frozen=True)
class Fixed:
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
        step_exp = -self.frac_bits
        top_exp = self.bits - 1 - self.frac_bits
        if step_exp < F32_EMIN or top_exp > F32_EMAX:
            raise FormatError(
                f"{self}: range exceeds float32 (step 2^{step_exp}, max about 2^{top_exp}); "
                f"frac_bits must lie in [{self.bits - 1 - F32_EMAX}, {-F32_EMIN}]"
            )

    def __str__(self) -> str:
        return f"fixed:{self.bits}:{self.frac_bits}"

    @property
    def int_bits(self) -> int:
        """Integer length IL of the thesis, sign bit included (bits = IL + FL)."""
        return self.bits - self.frac_bits

    @property
    def step(self) -> float:
        return 2.0 ** -self.frac_bits

    @property
    def max_value(self) -> float:
        return float(np.float32((2.0 ** (self.bits - 1) - 1) * self.step))

    @property
    def min_value(self) -> float:
        return -(2.0 ** (self.bits - 1)) * self.step

    @property
    def smallest_positive(self) -> float:
        return self.step

    def quantize(self, x, rounding: str = "nearest_even", rng=None) -> np.ndarray:
        _check_rounding(rounding)
        return _quantize_fixed(_as_f64(x), self.bits, self.frac_bits, rounding, rng)


def _quantize_fixed(x64: np.ndarray, bits: int, frac_bits, rounding: str, rng) -> np.ndarray:
    """Fixed point in float64; ``frac_bits`` may be an array broadcast against ``x64``."""
    scale = np.ldexp(1.0, frac_bits)
    k = np.clip(_round(x64 * scale, rounding, rng), -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    return (k / scale).astype(np.float32)


@dataclass(frozen=True)
class UFixed:
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
        if -self.frac_bits < F32_EMIN or self.bits - self.frac_bits > F32_EMAX:
            raise FormatError(
                f"{self}: range exceeds float32 (step 2^{-self.frac_bits}, max about "
                f"2^{self.bits - self.frac_bits}); frac_bits must lie in [{self.bits - F32_EMAX}, {-F32_EMIN}]"
            )

    def __str__(self) -> str:
        return f"ufixed:{self.bits}:{self.frac_bits}"

    @property
    def int_bits(self) -> int:
        return self.bits - self.frac_bits

    @property
    def step(self) -> float:
        return 2.0 ** -self.frac_bits

    @property
    def max_value(self) -> float:
        return float(np.float32((2.0**self.bits - 1) * self.step))

    @property
    def min_value(self) -> float:
        return 0.0

    @property
    def smallest_positive(self) -> float:
        return self.step

    def quantize(self, x, rounding: str = "nearest_even", rng=None) -> np.ndarray:
        _check_rounding(rounding)
        scale = np.ldexp(1.0, self.frac_bits)
        k = np.clip(_round(_as_f64(x) * scale, rounding, rng), 0.0, 2.0**self.bits - 1) + 0.0  # -0 -> +0
        return (k / scale).astype(np.float32)


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


ScalarFormat = Union[Fixed, UFixed, Minifloat, Pow2]


@dataclass(frozen=True)
class PerChannel:
    """One format per slice of a tensor along ``axis``: per-output-channel weight formats.

    Beyond the thesis (one fractional length per layer): an accelerator applies a per-channel
    shift for free, and weights whose channels differ in range by 2**8 (depthwise convolutions)
    need it. Channels share the kind and the bit width (one multiplier width in hardware) and
    differ in their scale: the fractional length of dynamic fixed point, or the exponent window
    of power-of-two weights. Minifloat has its own exponent per value, so it has no per-channel
    form.

    String form: the per-channel parameter becomes a comma list and ``@axis`` follows, as in
    ``fixed:8:5,7,6@0`` or ``pow2:-9,-8:-2,-1@0``. ``axis`` may be negative (counted from the
    end, as in ONNX); the ``QuantizeSim`` op stores it negative so its body needs no rank.
    """

    formats: tuple[ScalarFormat, ...]
    axis: int = 0
    kind: ClassVar[str] = "per-channel"

    def __post_init__(self) -> None:
        if not self.formats:
            raise FormatError("a per-channel format needs at least one channel")
        kinds = {type(f) for f in self.formats}
        if len(kinds) != 1:
            raise FormatError("all channels of a per-channel format must have the same kind")
        first = self.formats[0]
        if isinstance(first, Minifloat):
            raise FormatError("minifloat has no per-channel form (each value has its own exponent)")
        if isinstance(first, UFixed):
            raise FormatError("ufixed has no per-channel form (it is for activations, one format per tensor)")
        if isinstance(first, Fixed) and len({f.bits for f in self.formats}) != 1:
            raise FormatError("all channels of a per-channel fixed point format must have the same bits")

    @property
    def base_kind(self) -> str:
        return self.formats[0].kind

    @property
    def channels(self) -> int:
        return len(self.formats)

    @property
    def bits(self) -> int:
        return max(f.bits for f in self.formats)

    @property
    def max_value(self) -> float:
        return max(f.max_value for f in self.formats)

    @property
    def min_value(self) -> float:
        return min(f.min_value for f in self.formats)

    @property
    def step(self) -> float:
        return min(f.step for f in self.formats)

    @property
    def smallest_positive(self) -> float:
        return min(f.smallest_positive for f in self.formats)

    def params(self) -> tuple[np.ndarray, np.ndarray]:
        """The two per-channel parameters (bits or EMIN, fractional bits or EMAX) as int arrays."""
        if isinstance(self.formats[0], Fixed):
            return (np.array([f.bits for f in self.formats]), np.array([f.frac_bits for f in self.formats]))
        return (np.array([f.exp_min for f in self.formats]), np.array([f.exp_max for f in self.formats]))

    def format_text(self) -> str:
        """The ``format`` attribute of the op: the string form without ``@axis``."""
        a, b = self.params()
        first = self.formats[0]
        head = str(first.bits) if isinstance(first, Fixed) else _join(a)
        return f"{first.kind}:{head}:{_join(b)}"

    def __str__(self) -> str:
        return f"{self.format_text()}@{self.axis}"

    def broadcast_shape(self, ndim: int) -> tuple[int, ...]:
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 0 <= axis < ndim:
            raise FormatError(f"axis {self.axis} is out of range for a tensor of rank {ndim}")
        return (self.channels,) + (1,) * (ndim - axis - 1)

    def quantize(self, x, rounding: str = "nearest_even", rng=None) -> np.ndarray:
        _check_rounding(rounding)
        x64 = _as_f64(x)
        shape = self.broadcast_shape(x64.ndim)
        axis_len = x64.shape[len(x64.shape) - len(shape)]
        if axis_len != self.channels:
            raise FormatError(f"per-channel format has {self.channels} channels, the tensor has {axis_len} along axis {self.axis}")
        a, b = (p.reshape(shape) for p in self.params())
        if isinstance(self.formats[0], Fixed):
            return _quantize_fixed(x64, self.formats[0].bits, b, rounding, rng)
        return _quantize_pow2(x64, a, b, rounding, rng)


def _join(values) -> str:
    return ",".join(str(int(v)) for v in values)


Format = Union[Fixed, UFixed, Minifloat, Pow2, PerChannel]
FORMAT_KINDS = ("fixed", "ufixed", "minifloat", "pow2")


def _ints(text: str, source: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise FormatError(f"cannot parse format {source!r}: the two parameters must be integers") from None


def parse_format(text: str | Format, axis: int | None = None) -> Format:
    """Parse ``fixed:B:F``, ``ufixed:B:F``, ``minifloat:B:E``, ``pow2:EMIN:EMAX`` or a per-channel form.

    A per-channel format has a comma list in place of a parameter and ``@axis`` at the end (or
    the ``axis`` argument): ``fixed:8:5,7,6@0``. A format object passes through.
    """
    if isinstance(text, (Fixed, UFixed, Minifloat, Pow2, PerChannel)):
        return text
    source = str(text).strip()
    body, _, at = source.partition("@")
    if at:
        try:
            axis = int(at)
        except ValueError:
            raise FormatError(f"cannot parse format {source!r}: the axis after '@' must be an integer") from None
    parts = body.split(":")
    usage = "expected fixed:BITS:FRAC_BITS, ufixed:BITS:FRAC_BITS, minifloat:BITS:EXP_BITS or pow2:EMIN:EMAX"
    if len(parts) != 3:
        raise FormatError(f"cannot parse format {source!r}: {usage}")
    kind = parts[0].lower()
    if kind not in FORMAT_KINDS:
        raise FormatError(f"unknown format kind {parts[0]!r}: {usage}")
    a, b = _ints(parts[1], source), _ints(parts[2], source)
    make = {"fixed": Fixed, "ufixed": UFixed, "minifloat": Minifloat, "pow2": Pow2}[kind]
    if axis is None:
        if len(a) != 1 or len(b) != 1:
            raise FormatError(f"cannot parse format {source!r}: a per-channel list needs an axis ('@AXIS')")
        return make(a[0], b[0])
    n = max(len(a), len(b))
    if {len(a), len(b)} - {1, n}:
        raise FormatError(f"cannot parse format {source!r}: per-channel lists differ in length")
    a, b = a * (n // len(a)), b * (n // len(b))
    return PerChannel(tuple(make(x, y) for x, y in zip(a, b)), axis)


def quantize(x, fmt: Format | str, rounding: str = "nearest_even", seed: int | None = None) -> np.ndarray:
    """Quantize ``x`` (cast to float32) to ``fmt``; the reference for the ``QuantizeSim`` op."""
    fmt = parse_format(fmt)
    rng = np.random.default_rng(seed) if rounding == "stochastic" else None
    return fmt.quantize(x, rounding=rounding, rng=rng)


@dataclass(frozen=True)
class FormatInfo:
    """What ``ristretto-onnx formats`` prints for a format."""

    format: str
    bits: int
    min_value: float
    max_value: float
    step: float
    smallest_positive: float
    levels: int

    @classmethod
    def of(cls, fmt: Format | str) -> "FormatInfo":
        fmt = parse_format(fmt)
        if isinstance(fmt, PerChannel):
            levels = max(cls.of(f).levels for f in fmt.formats)
        elif isinstance(fmt, (Fixed, UFixed)):
            levels = 2**fmt.bits
        elif isinstance(fmt, Minifloat):
            levels = 2 * (2**fmt.exp_bits - 1) * 2**fmt.mant_bits + 1  # ± normals and zero
        else:
            levels = 2 * (fmt.exp_max - fmt.exp_min + 1) + 1
        return cls(str(fmt), fmt.bits, fmt.min_value, fmt.max_value, fmt.step,
                   fmt.smallest_positive, levels)
