"""Search policies: how a searched bit width turns into a format for each group of numbers.

The search (:mod:`ristretto_onnx.search`) only ever asks one question of a scheme: "give me the
formats of these groups at B bits". The answer depends on the scheme (thesis ch. 4-7):

* ``dfp`` — dynamic fixed point: each group its own fractional length from its range (eq. 5.2,
  layer outputs one integer bit fewer); optionally one per output channel for weights;
* ``fixed`` — static fixed point: one format for all groups of a category, the integer/fractional
  split chosen among candidates by accuracy (thesis 4.4.1);
* ``minifloat`` — one format per category, exponent bits from eq. 6.2 (or a given split);
* ``pow2`` — power-of-two weights, the exponent window placed at the top of each group's range;
  activations stay float (thesis fig. 7.2).

Ranges come in as :class:`GroupRange` (max |x|, and per output channel for weights), computed
once by the caller from initializers and calibration data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.range_rules import check_rule, frac_bits, minifloat_exp_bits_mse
from ristretto_onnx.formats import (
    Fixed,
    Format,
    Minifloat,
    PerChannel,
    Pow2,
    UFixed,
    dfp_format,
    integer_bits,
    minifloat_exp_bits,
)

SCHEMES = ("dfp", "fixed", "minifloat", "pow2")

#: The thesis's categories of numbers (tables 5.1/5.2): searched one at a time.
CATEGORIES = ("activations", "conv_weights", "fc_weights")


@dataclass(frozen=True)
class GroupRange:
    """What the schemes need to know of one group: its range, overall and per output channel."""

    group: str
    role: str  # inputs | weights | outputs | bias
    kind: str  # conv | fc
    max_abs: float
    channel_max_abs: tuple[float, ...] | None = field(default=None, repr=False)
    channel_axis: int | None = None
    size: int = 0  # number of values (weights: parameter count; activations: per image)
    stats: Any = field(default=None, repr=False, compare=False)  # RangeStats, for range rules
    #: One RangeStats per output channel (weights), so range rules work per channel too.
    channel_stats: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)
    #: A layer output bounded by a Clip (ReLU6): measured after the Clip, and the thesis's
    #: "one integer bit fewer for outputs" does not apply (see passes.clip_bounds).
    bounded: bool = False
    #: An activation group that cannot be negative (passes.nonnegative): dfp gives it ``ufixed``
    #: (the sign bit spent on range). Static fixed point keeps the thesis's one signed format.
    unsigned: bool = False

    @property
    def layer_output(self) -> bool:
        """Whether the thesis's layer-output rule (one integer bit fewer) applies."""
        return self.role == "outputs" and not self.bounded

    @property
    def category(self) -> str | None:
        if self.role in ("inputs", "outputs"):
            return "activations"
        if self.role == "weights":
            return f"{self.kind}_weights"
        return None  # bias: float unless asked


def category_groups(ranges: Sequence[GroupRange], category: str) -> list[GroupRange]:
    return [r for r in ranges if r.category == category]


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
    min_bits: int = 2
    range_rule: str = "max"

    def formats(self, groups, bits, variant=None):
        out: dict[str, Format] = {}
        for g in groups:
            if g.role == "weights" and self.per_channel and g.channel_max_abs and g.channel_axis is not None:
                if self.range_rule != "max" and g.channel_stats:
                    chans = tuple(Fixed(bits, frac_bits(s, bits, self.range_rule)) for s in g.channel_stats)
                else:
                    chans = tuple(dfp_format(m, bits) for m in g.channel_max_abs)
                out[g.group] = PerChannel(chans, g.channel_axis)
            elif g.unsigned and bits < 32 and g.stats is not None:  # as B + 1 signed bits
                out[g.group] = UFixed(bits, frac_bits(g.stats, bits + 1, self.range_rule, layer_output=g.layer_output))
            elif self.range_rule != "max" and g.stats is not None:
                out[g.group] = Fixed(bits, frac_bits(g.stats, bits, self.range_rule, layer_output=g.layer_output))
            else:
                out[g.group] = dfp_format(g.max_abs, bits, layer_output=g.layer_output)
        return out


@dataclass(frozen=True)
class StaticFixedPoint(Scheme):
    """One ``Fixed(bits, F)`` for every group of a category; F is a searched variant."""

    name: str = "fixed"
    min_bits: int = 2

    def variants(self, groups, bits):
        # Integer lengths from "no saturation of the largest group" down to "fits the typical
        # group"; the thesis tries the splits and keeps the most accurate (4.4.1).
        ils = sorted({integer_bits(g.max_abs) - (1 if g.layer_output else 0) for g in groups if g.max_abs > 0})
        if not ils:
            return [bits - 1]
        hi = ils[-1]
        median = ils[len(ils) // 2]
        cands = sorted({hi, hi - 1, median, median + 1, (hi + median) // 2}, reverse=True)
        return [bits - il for il in cands if bits - 1 - (bits - il) <= 127 and bits - il <= 126][:4]

    def formats(self, groups, bits, variant=None):
        frac = variant if variant is not None else self.variants(groups, bits)[0]
        fmt = Fixed(bits, frac)
        return {g.group: fmt for g in groups}

    def describe(self, variant):
        return f"frac_bits={variant}"


@dataclass(frozen=True)
class MinifloatScheme(Scheme):
    """One ``Minifloat(bits, E)`` per category; E from eq. 6.2, or a variant near it."""

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
        at 8 bits it leaves small weights below the smallest normal, so it is not tried when the
        histograms can tell better.
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


@dataclass(frozen=True)
class PowerOfTwo(Scheme):
    """Power-of-two weights; ``bits`` sets the window of 2**(bits-1) exponents per group.

    The window's top is the exponent nearest to the group's largest magnitude (per output channel
    with ``per_channel``). A fixed window (``exp_min``/``exp_max``, e.g. the thesis's -8..-1)
    overrides the search.
    """

    name: str = "pow2"
    categories: tuple[str, ...] = ("conv_weights", "fc_weights")
    min_bits: int = 2
    max_bits: int = 6
    exp_min: int | None = None
    exp_max: int | None = None
    per_channel: bool = False

    def _window(self, max_abs: float, bits: int) -> Pow2:
        if self.exp_min is not None and self.exp_max is not None:
            return Pow2(self.exp_min, self.exp_max)
        top = int(np.clip(round(math.log2(max_abs)) if max_abs > 0 else 0, -100, 100))
        return Pow2(max(top - 2 ** (bits - 1) + 1, -125), top)

    def formats(self, groups, bits, variant=None):
        out: dict[str, Format] = {}
        for g in groups:
            if self.per_channel and g.channel_max_abs and g.channel_axis is not None:
                out[g.group] = PerChannel(tuple(self._window(m, bits) for m in g.channel_max_abs), g.channel_axis)
            else:
                out[g.group] = self._window(g.max_abs, bits)
        return out


def make_scheme(name: str, *, weight_granularity: str = "tensor", exp_min: int | None = None,
                exp_max: int | None = None, exp_bits: int | None = None, range_rule: str = "max") -> Scheme:
    per_channel = weight_granularity == "channel"
    if weight_granularity not in ("tensor", "channel"):
        raise RistrettoError(f"--weight-granularity must be tensor or channel, not {weight_granularity!r}")
    check_rule(range_rule)
    if name == "dfp":
        return DynamicFixedPoint(per_channel=per_channel, range_rule=range_rule)
    if per_channel and name in ("fixed", "minifloat"):
        raise RistrettoError(f"per-channel weights are not available for {name} (one format per category)")
    if name == "fixed":
        return StaticFixedPoint()
    if name == "minifloat":
        return MinifloatScheme(exp_bits=exp_bits)
    if name == "pow2":
        if (exp_min is None) != (exp_max is None):
            raise RistrettoError("give both --exp-min and --exp-max, or neither")
        return PowerOfTwo(exp_min=exp_min, exp_max=exp_max, per_channel=per_channel)
    raise RistrettoError(f"unknown scheme {name!r}; expected one of {', '.join(SCHEMES)} or auto")


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
