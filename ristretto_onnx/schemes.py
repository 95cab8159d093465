"""Format rules of the schemes for one fixed configuration (``ristretto-onnx quantize``).

Each function maps the groups of the selected layers (and their measured ranges) to a plan:
group id -> format, or ``None`` for float. Biases stay float unless ``quantize_bias``.

* ``dfp``: every group its own fractional length from its range (thesis eq. 5.2, layer outputs
  one integer bit fewer, or another range rule), optionally per output channel for weights;
* ``fixed``: one integer length for the whole network (thesis ch. 4), chosen by the caller among
  :func:`fixed_candidates`;
* ``minifloat``: one shared format whose exponent bits follow eq. 6.2 on the largest range;
* ``pow2``: weights only, one exponent window (thesis ch. 7: ``pow2:-8:-1``), or one window of
  that width per output channel.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping

from ristretto_onnx.formats import Fixed, Format, PerChannel, Pow2, UFixed, integer_bits, minifloat_format
from ristretto_onnx.range_rules import frac_bits

SCHEMES = ("fixed", "dfp", "minifloat", "pow2")
DEFAULT_POW2 = Pow2(-8, -1)


def _bits_for(role: str, weight_bits: int, act_bits: int) -> int:
    return act_bits if role in ("inputs", "outputs") else weight_bits


def uniform_plan(groups: Iterable, fmt: Format, *, quantize_bias: bool = False) -> dict[str, Format | None]:
    """``fmt`` everywhere (biases only with ``quantize_bias``)."""
    return {g.id: (fmt if g.role != "bias" or quantize_bias else None) for g in groups}


def pow2_plan(groups: Iterable, pow2: Pow2 = DEFAULT_POW2, *, quantize_bias: bool = False,
              channels: Mapping | None = None) -> dict[str, Format | None]:
    """Power-of-two weights, everything else float (thesis fig. 7.2).

    With ``channels`` (weights group id -> (axis, per-channel ranges)), each output channel gets
    a window as wide as ``pow2`` with its top at that channel's largest magnitude.
    """
    plan: dict[str, Format | None] = {}
    for g in groups:
        if g.role != "weights":
            plan[g.id] = None
        elif channels and g.id in channels:
            axis, stats = channels[g.id]
            plan[g.id] = PerChannel(tuple(pow2_window(s.max_abs, pow2) for s in stats), axis)
        else:
            plan[g.id] = pow2
    return plan


def pow2_window(max_abs: float, like: Pow2) -> Pow2:
    """A window of ``like``'s width whose top exponent is nearest to ``max_abs`` (``like`` for 0)."""
    if not max_abs > 0:
        return like
    width = like.exp_max - like.exp_min
    top = int(min(max(round(math.log2(max_abs)), -125 + width), 126))
    return Pow2(top - width, top)


def dfp_plan(groups: Iterable, ranges: Mapping, *, weight_bits: int, act_bits: int,
             quantize_bias: bool = False, range_rule: str = "max",
             channels: Mapping | None = None, bounded: Collection[str] = (),
             unsigned: Collection[str] = ()) -> dict[str, Format | None]:
    """Dynamic fixed point: each group's fractional length by ``range_rule`` on its range.

    With ``channels`` (weights group id -> (axis, per-channel ranges)) those weights get one
    fractional length per output channel, by the same rule. Layer outputs in ``bounded`` (read
    by a Clip such as ReLU6) keep their integer bit (see passes.clip_bounds). Activation groups
    in ``unsigned`` (non-negative, see passes.nonnegative) get ``ufixed:B:F``, F chosen by the
    rule as for B + 1 signed bits (the same values on non-negative numbers).
    """
    plan: dict[str, Format | None] = {}
    for g in groups:
        if g.role == "bias" and not quantize_bias:
            plan[g.id] = None
            continue
        bits = _bits_for(g.role, weight_bits, act_bits)
        if channels and g.id in channels:
            axis, stats = channels[g.id]
            plan[g.id] = PerChannel(tuple(Fixed(bits, frac_bits(s, bits, range_rule)) for s in stats), axis)
        else:
            layer_output = g.role == "outputs" and g.id not in bounded
            if g.id in unsigned and bits < 32:
                plan[g.id] = UFixed(bits, frac_bits(ranges[g.id], bits + 1, range_rule, layer_output=layer_output))
            else:
                plan[g.id] = Fixed(bits, frac_bits(ranges[g.id], bits, range_rule, layer_output=layer_output))
    return plan


def minifloat_plan(groups: Iterable, ranges: Mapping, *, weight_bits: int, act_bits: int,
                   quantize_bias: bool = False) -> dict[str, Format | None]:
    groups = list(groups)
    top = max((ranges[g.id].max_abs for g in groups if g.id in ranges), default=1.0)
    plan: dict[str, Format | None] = {}
    for g in groups:
        if g.role == "bias" and not quantize_bias:
            plan[g.id] = None
            continue
        plan[g.id] = minifloat_format(top, _bits_for(g.role, weight_bits, act_bits))
    return plan


def fixed_candidates(groups: Iterable, ranges: Mapping, *, weight_bits: int, act_bits: int,
                     quantize_bias: bool = False) -> list[int]:
    """Integer lengths worth trying for the shared format, widest range first.

    From "no group saturates" down to "only the typical group fits": the thesis tries the
    splits of the bit width and keeps the most accurate (4.4.1).
    """
    ils = sorted({integer_bits(ranges[g.id].max_abs) for g in groups
                  if g.id in ranges and ranges[g.id].max_abs > 0 and (g.role != "bias" or quantize_bias)})
    if not ils:
        return [1]
    bits = min(weight_bits, act_bits)
    hi, lo = ils[-1], ils[len(ils) // 2]
    return [il for il in range(hi, min(lo, hi) - 2, -1) if il <= bits + 126 and bits - il <= 126][:8] or [hi]


def fixed_plan(groups: Iterable, int_bits: int, *, weight_bits: int, act_bits: int,
               quantize_bias: bool = False) -> dict[str, Format | None]:
    plan: dict[str, Format | None] = {}
    for g in groups:
        if g.role == "bias" and not quantize_bias:
            plan[g.id] = None
            continue
        bits = _bits_for(g.role, weight_bits, act_bits)
        plan[g.id] = Fixed(bits, bits - int_bits)
    return plan
