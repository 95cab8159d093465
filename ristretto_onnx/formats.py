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

from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np

from ristretto_onnx.errors import FormatError
from ristretto_onnx.scalar_formats import (  # noqa: F401  (re-exported: the formats API lives here)
    F32_EMAX,
    F32_EMIN,
    ROUNDINGS,
    Fixed,
    Minifloat,
    Pow2,
    UFixed,
    _as_f64,
    _check_rounding,
    _quantize_fixed,
    _quantize_pow2,
)

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
