"""The number schemes (thesis ch. 4-7): how a bit width turns into a format for each group.

One module owns the rules of every command: ``compress`` asks them for each searched width,
``quantize`` for the one width it is given, so both give a group the same format at the same width.

* ``dfp`` — dynamic fixed point: each group its own fractional length from its range by a range
  rule (:mod:`ristretto_onnx.range_rules`; the thesis's eq. 5.2 is ``max``, layer outputs one
  integer bit fewer); optionally one per output channel for weights;
* ``fixed`` — static fixed point: one format for all groups of a category, the integer/fractional
  split chosen among :meth:`StaticFixedPoint.variants` by accuracy (thesis 4.4.1);
* ``minifloat`` — one format per category; the exponent/mantissa split chosen among the split of
  least relative error on the measured histograms and one exponent bit more (eq. 6.2 without
  histograms, or a given split);
* ``pow2`` — power-of-two weights; activations stay float (thesis fig. 7.2). A window of
  ``2**(bits-1)`` exponents topped at each group's (or output channel's) largest magnitude, or a
  fixed window such as the thesis's ``pow2:-8:-1`` (per channel: that width, topped per channel).

Ranges come in as :class:`~ristretto_onnx.stats.GroupRange` from the range stage
(:mod:`ristretto_onnx.ranges`). :func:`check_scheme` is the one validation of scheme options
that both commands run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed, Format, Minifloat, PerChannel, Pow2, UFixed
from ristretto_onnx.range_rules import (check_rule, dfp_frac_bits, frac_bits, integer_bits, minifloat_exp_bits,
                                        minifloat_exp_bits_mse)
from ristretto_onnx.stats import CATEGORIES, GroupRange, RangeStats, category_groups

SCHEMES = ("dfp", "fixed", "minifloat", "pow2")

#: The range rule of every command unless told otherwise: never below the thesis's ``max`` on any
#: zoo network and width, far better at 4-6 bits (docs/PER_CHANNEL.md). ``max`` is opt-in.
DEFAULT_RANGE_RULE = "mse"

#: The thesis's power-of-two window (ch. 7, 4 bits: sign and 3-bit exponent code).
DEFAULT_POW2 = Pow2(-8, -1)

#: ``auto``: per tensor or per channel layer by layer (ristretto_onnx.granularity_rule).
WEIGHT_GRANULARITIES = ("tensor", "channel", "auto")


def check_scheme(scheme: str | None, *, weight_granularity: str = "tensor",
                 range_rule: str = DEFAULT_RANGE_RULE, forced_format: bool = False) -> None:
    """Reject scheme options that do not fit together (one line each, as the CLI prints them).

    ``scheme`` may be ``auto`` (compress tries every scheme) or ``None`` with ``forced_format``
    (quantize with one forced format).
    """
    if scheme is not None and scheme not in SCHEMES + ("auto",):
        raise RistrettoError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)} (compress: or auto)")
    if weight_granularity not in WEIGHT_GRANULARITIES:
        raise RistrettoError(f"--weight-granularity must be tensor, channel or auto, not {weight_granularity!r}")
    if weight_granularity != "tensor" and (forced_format or scheme in ("fixed", "minifloat")):
        what = "--format" if forced_format else f"--scheme {scheme}"
        why = " (minifloat has no per-channel form)" if scheme == "minifloat" and not forced_format else ""
        raise RistrettoError(f"per-channel weights need --scheme dfp or pow2 (compress: or auto); "
                             f"{what} has one format per category{why}")
    check_rule(range_rule)
    if range_rule != DEFAULT_RANGE_RULE and (forced_format or scheme not in ("dfp", "auto")):
        raise RistrettoError(f"--range-rule {range_rule} applies to --scheme dfp only")


@dataclass(frozen=True)
class Scheme:
    """Base: a scheme maps (groups of one category, bits) to formats; see the module docstring."""

    name: str = "base"
    #: Categories this scheme quantizes (pow2 leaves activations in float).
    categories: tuple[str, ...] = CATEGORIES
    min_bits: int = 2
    max_bits: int = 16

    def formats(self, groups: Sequence[GroupRange], bits: int, variant: int | None = None) -> dict[str, Format]:
        raise NotImplementedError

    def variants(self, groups: Sequence[GroupRange], bits: int) -> list[int | None]:
        """Alternatives at the same width worth scoring (fixed: IL splits, minifloat: E splits)."""
        return [None]

    def describe(self, variant: int | None) -> str:
        return ""


@dataclass(frozen=True)
class DynamicFixedPoint(Scheme):
    """Each group its own fractional length, by ``range_rule`` (:mod:`ristretto_onnx.range_rules`).

    With ``per_channel``, weights get one fractional length per output channel, each chosen by
    the same rule on that channel's values (an accelerator applies a per-channel shift for free).
    """

    name: str = "dfp"
    per_channel: bool = False
    range_rule: str = DEFAULT_RANGE_RULE

    def _frac(self, stats: RangeStats | None, max_abs: float, bits: int, layer_output: bool = False) -> int:
        if stats is None:  # a range without histogram: only the thesis's rule applies
            return dfp_frac_bits(max_abs, bits, layer_output=layer_output)
        return frac_bits(stats, bits, self.range_rule, layer_output=layer_output)

    def formats(self, groups, bits, variant=None):
        out: dict[str, Format] = {}
        for g in groups:
            if g.role == "weights" and self.per_channel and g.channel_max_abs and g.channel_axis is not None:
                stats = g.channel_stats or (None,) * len(g.channel_max_abs)
                chans = tuple(Fixed(bits, self._frac(s, m, bits)) for s, m in zip(stats, g.channel_max_abs))
                out[g.group] = PerChannel(chans, g.channel_axis)
            elif g.unsigned and bits < 32:  # ufixed:B:F equals fixed:B+1:F on non-negative values
                out[g.group] = UFixed(bits, self._frac(g.stats, g.max_abs, bits + 1, g.layer_output))
            else:
                out[g.group] = Fixed(bits, self._frac(g.stats, g.max_abs, bits, g.layer_output))
        return out


@dataclass(frozen=True)
class StaticFixedPoint(Scheme):
    """One ``Fixed(bits, F)`` for every group of a category; F is a searched variant."""

    name: str = "fixed"
    #: Extra integer bits above "no group saturates" for the first candidate: headroom for data
    #: beyond the calibration maximum (quantize, which scores on calibration images only: 1).
    headroom: int = 0

    def variants(self, groups, bits):
        """The split candidates (fractional lengths), most integer bits first.

        Integer lengths from "no saturation of the largest group" down to "fits the typical
        group"; the thesis tries the splits and keeps the most accurate (4.4.1). Splits float32
        cannot represent are left out.
        """
        ils = sorted({integer_bits(g.max_abs) - (1 if g.layer_output else 0) for g in groups if g.max_abs > 0})
        if not ils:
            return [bits - 1]
        hi = ils[-1]
        median = ils[len(ils) // 2]
        # No group saturates: without the layer-output bit, which would clip the largest output.
        top = max(integer_bits(g.max_abs) for g in groups if g.max_abs > 0) + self.headroom
        cands = sorted({top, hi, hi - 1, median, median + 1, (hi + median) // 2}, reverse=True)
        return [bits - il for il in cands if bits - 1 - (bits - il) <= 127 and bits - il <= 126][:4]

    def formats(self, groups, bits, variant=None):
        frac = variant if variant is not None else self.variants(groups, bits)[0]
        fmt = Fixed(bits, frac)
        return {g.group: fmt for g in groups}

    def describe(self, variant):
        return f"frac_bits={variant}"


@dataclass(frozen=True)
class MinifloatScheme(Scheme):
    """One ``Minifloat(bits, E)`` per category; E from the histograms, eq. 6.2 or given."""

    name: str = "minifloat"
    min_bits: int = 3
    exp_bits: int | None = None

    def rule_exp_bits(self, groups, bits) -> int:
        """Eq. 6.2 on the category's largest value (no saturation), or the given split."""
        top = max((g.max_abs for g in groups), default=1.0)
        e = self.exp_bits or minifloat_exp_bits(top)
        return int(min(max(e, 1), bits - 1, 7, 23 + bits))

    def variants(self, groups, bits):
        """The split of least relative error on the measured histograms, and one more exponent bit.

        Eq. 6.2 (the fallback without histograms) only prevents saturation of the largest value:
        at 8 bits it leaves small weights below the smallest normal (ResNet-20: 9.9 % top-1), so
        it is not tried when the histograms can tell better.
        """
        e = self.rule_exp_bits(groups, bits)
        if self.exp_bits:
            return [e]
        stats = [g.stats for g in groups if g.stats is not None]
        cands = [e]
        if stats:
            best = minifloat_exp_bits_mse(stats, bits)
            cands = [best, best + 1]
        legal = [x for x in dict.fromkeys(cands) if 1 <= x <= min(bits - 1, 7) and bits - 1 - x <= 23]
        return legal or [max(1, bits - 24)]

    def formats(self, groups, bits, variant=None):
        e = variant if variant is not None else self.rule_exp_bits(groups, bits)
        fmt = Minifloat(bits, e)
        return {g.group: fmt for g in groups}

    def describe(self, variant):
        return f"exp_bits={variant}"


def pow2_window(max_abs: float, width: int, default: Pow2 | None = None) -> Pow2:
    """Exponents ``top - width .. top`` with ``top`` the exponent nearest to ``max_abs``.

    The window keeps its width at the ends of float32's exponents; an all-zero group gets
    ``default`` (or the window topped at 2**0).
    """
    if not max_abs > 0:
        return default or Pow2(-width, 0)
    top = int(min(max(round(math.log2(max_abs)), -125 + width), 126))
    return Pow2(top - width, top)


@dataclass(frozen=True)
class PowerOfTwo(Scheme):
    """Power-of-two weights; ``bits`` sets the window of 2**(bits-1) exponents per group.

    The window's top is the exponent nearest to the group's largest magnitude (per output channel
    with ``per_channel``). A fixed window (``window``, e.g. the thesis's -8..-1) overrides the
    width search: per tensor it is used as it is, per channel its width is topped per channel.
    """

    name: str = "pow2"
    categories: tuple[str, ...] = ("conv_weights", "fc_weights")
    max_bits: int = 6
    window: Pow2 | None = None
    per_channel: bool = False

    def _window(self, max_abs: float, bits: int, per_channel: bool = False) -> Pow2:
        if self.window is not None and not per_channel:
            return self.window
        width = self.window.exp_max - self.window.exp_min if self.window is not None else 2 ** (bits - 1) - 1
        return pow2_window(max_abs, width, self.window)

    def formats(self, groups, bits, variant=None):
        out: dict[str, Format] = {}
        for g in groups:
            if self.per_channel and g.channel_max_abs and g.channel_axis is not None:
                out[g.group] = PerChannel(tuple(self._window(m, bits, True) for m in g.channel_max_abs),
                                          g.channel_axis)
            else:
                out[g.group] = self._window(g.max_abs, bits)
        return out


def make_scheme(name: str, *, weight_granularity: str = "tensor", exp_min: int | None = None,
                exp_max: int | None = None, exp_bits: int | None = None,
                range_rule: str = DEFAULT_RANGE_RULE) -> Scheme:
    """The scheme ``name`` with its options (``exp_min``/``exp_max``: a fixed pow2 window)."""
    check_scheme(name, weight_granularity=weight_granularity,
                 range_rule=range_rule if name == "dfp" else DEFAULT_RANGE_RULE)
    per_channel = weight_granularity == "channel"  # auto: the per-tensor scheme, granularity_rule wraps it
    if name == "dfp":
        return DynamicFixedPoint(per_channel=per_channel, range_rule=range_rule)
    if name == "fixed":
        return StaticFixedPoint()
    if name == "minifloat":
        return MinifloatScheme(exp_bits=exp_bits)
    if name == "pow2":
        if (exp_min is None) != (exp_max is None):
            raise RistrettoError("give both --exp-min and --exp-max, or neither")
        window = None if exp_min is None else Pow2(exp_min, exp_max)
        return PowerOfTwo(window=window, per_channel=per_channel)
    raise RistrettoError(f"unknown scheme {name!r}; expected one of {', '.join(SCHEMES)}")


def plan_for(scheme: Scheme, ranges: Sequence[GroupRange], widths: Mapping[str, int | None],
             variants: Mapping[str, int | None] | None = None) -> dict[str, Format | None]:
    """The full plan for per-category widths (``None`` = that category in float)."""
    plan: dict[str, Format | None] = {r.group: None for r in ranges}
    for cat, bits in widths.items():
        if bits is None:
            continue
        groups = category_groups(ranges, cat)
        if groups:
            plan.update(scheme.formats(groups, bits, (variants or {}).get(cat)))
    return plan
