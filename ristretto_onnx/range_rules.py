"""Range rules: which format parameters a group gets from its range (thesis eq. 5.2 and 6.2).

The integer length of eq. 5.2 (:func:`integer_bits`, :func:`dfp_frac_bits`) and the exponent
width of eq. 6.2 (:func:`minifloat_exp_bits`) from the largest magnitude; and, for dynamic fixed
point, the rule that picks the fractional length from the whole distribution:

* ``max`` — the thesis's rule (eq. 5.2): no value saturates; layer outputs one integer bit fewer.
* ``percentile:P`` — the integer length covers the P-th percentile of |x| (e.g. 99.99): the rare
  outliers saturate, and every other value gets finer steps.
* ``mse`` — the fractional length (among the max rule's and up to four finer) that minimizes the
  expected squared quantization error over the measured distribution: rounding error
  (step²/12 per value that is not clipped, x² for values that round to zero) plus clipping error
  ((|x| − max)² per saturated value), evaluated on the range histogram of
  :class:`~ristretto_onnx.stats.RangeStats` at its bin centers.
"""

from __future__ import annotations

import math

import numpy as np

from ristretto_onnx.errors import FormatError, RistrettoError
from ristretto_onnx.formats import F32_EMAX, F32_EMIN, Fixed, Minifloat, PerChannel
from ristretto_onnx.stats import RangeStats, bin_centers

RULES = ("max", "percentile", "mse")


def integer_bits(max_abs: float) -> int:
    """Integer length IL (sign bit included) that avoids saturating ``max_abs`` (eq. 5.2).

    The thesis prints ``IL = ceil(lg2(max + 1))``; its text asks for "enough bits to avoid
    saturation" and a sign bit, which is ``ceil(lg2(max)) + 1``: two's complement ``[IL.FL]``
    reaches ``2**(IL-1)``. The two agree for ``max`` in (0, 1]; for larger ranges the printed form
    would saturate (max = 3 gives IL = 2, whose largest value is < 2), so we use the latter.
    """
    if not np.isfinite(max_abs):
        raise FormatError(f"cannot choose an integer length for a range of {max_abs}")
    if max_abs <= 0:
        return 1 - 126  # an all-zero group: any format represents it; keep the step tiny but legal
    return math.ceil(math.log2(max_abs)) + 1


def dfp_frac_bits(max_abs: float, bits: int, *, layer_output: bool = False) -> int:
    """Fractional length of a dynamic fixed point group with ``bits`` bits (thesis 5.2.1).

    Layer outputs get one integer bit fewer (one more fractional bit) than the no-saturation rule,
    which the thesis found slightly better: the rare largest outputs saturate a little.
    """
    il = integer_bits(max_abs) - (1 if layer_output else 0)
    fl = bits - il
    # Stay inside the float32-representable formats (an all-zero group would otherwise overflow).
    return int(min(max(fl, bits - 1 - F32_EMAX), -F32_EMIN))


def dfp_format(max_abs: float, bits: int, *, layer_output: bool = False) -> Fixed:
    """The dynamic fixed point format of a group whose largest magnitude is ``max_abs``."""
    return Fixed(bits, dfp_frac_bits(max_abs, bits, layer_output=layer_output))


def dfp_channel_format(max_abs, bits: int, axis: int = 0) -> PerChannel:
    """Per-output-channel dynamic fixed point: eq. 5.2 applied to each channel's max."""
    return PerChannel(tuple(dfp_format(float(m), bits) for m in np.asarray(max_abs).ravel()), axis)


def minifloat_exp_bits(max_abs: float) -> int:
    """Exponent bits that avoid saturation of ``max_abs`` (thesis eq. 6.2), at least 1.

    With E exponent bits the largest exponent is ``2**(E-1)``, so the values reach ``2**(2**(E-1)+1)``
    (with unbounded mantissa); eq. 6.2 is the smallest E for which that exceeds ``max_abs``.
    """
    if not np.isfinite(max_abs) or max_abs <= 0:
        return 1
    lg = math.log2(max_abs)
    if lg - 1 <= 0:
        return 1
    return max(1, math.ceil(math.log2(lg - 1) + 1))


def minifloat_format(max_abs: float, bits: int) -> Minifloat:
    """The minifloat with ``bits`` bits and eq. 6.2's exponent width (capped by the bit budget)."""
    e = min(minifloat_exp_bits(max_abs), bits - 1, 7)
    return Minifloat(bits, max(1, e))


def check_rule(rule: str) -> str:
    """Validate ``max``, ``mse`` or ``percentile:P`` (0 < P <= 100)."""
    name, _, arg = rule.partition(":")
    if name not in RULES:
        raise RistrettoError(f"unknown range rule {rule!r}; expected max, mse or percentile:P (e.g. percentile:99.99)")
    if name == "percentile":
        try:
            p = float(arg)
        except ValueError:
            raise RistrettoError(f"range rule {rule!r}: give the percentile, e.g. percentile:99.99") from None
        if not 0 < p <= 100:
            raise RistrettoError(f"range rule {rule!r}: the percentile must be in (0, 100]")
    elif arg:
        raise RistrettoError(f"range rule {rule!r} takes no argument")
    return rule


def expected_sq_error(stats: RangeStats, fmt: Fixed) -> float:
    """Mean squared quantization error of ``fmt`` over the values ``stats`` describes."""
    centers, counts = bin_centers(stats)
    if counts.sum() == 0:
        return 0.0
    step, top = fmt.step, fmt.max_value
    err = np.where(centers > top, (centers - top) ** 2,
                   np.where(centers < step / 2, centers**2, step**2 / 12.0))
    return float((err * counts).sum() / counts.sum())


def quantization_sq_error(stats: RangeStats, fmt) -> float:
    """Mean squared error of any scalar format over ``stats``'s histogram (bin centers)."""
    centers, counts = bin_centers(stats)
    if counts.sum() == 0:
        return 0.0
    q = fmt.quantize(centers.astype(np.float32)).astype(np.float64)
    return float((((q - centers) ** 2) * counts).sum() / counts.sum())


def minifloat_exp_bits_mse(stats_list, bits: int) -> int:
    """Exponent bits of a shared ``bits``-bit minifloat that minimize the relative error.

    Eq. 6.2 only prevents saturation of the largest value; with few bits that can leave small
    weights below the smallest normal (flushed to zero). Here every legal split is scored on the
    histograms of all groups sharing the format, each group's error relative to its mean square.
    """
    best, best_err = None, np.inf
    for e in range(1, min(bits - 1, 7) + 1):
        if bits - 1 - e > 23:
            continue
        fmt = Minifloat(bits, e)
        err = 0.0
        for st in stats_list:
            c, n = bin_centers(st)
            power = float((c**2 * n).sum() / max(n.sum(), 1)) or 1.0
            err += quantization_sq_error(st, fmt) / power
        if err < best_err:
            best, best_err = e, err
    return best if best is not None else 1


def frac_bits(stats: RangeStats, bits: int, rule: str, *, layer_output: bool = False) -> int:
    """The fractional length of a ``bits``-bit group under ``rule`` (see the module docstring)."""
    name, _, arg = check_rule(rule).partition(":")
    if name == "max" or stats.max_abs <= 0:
        return dfp_frac_bits(stats.max_abs, bits, layer_output=layer_output)
    if name == "percentile":
        return dfp_frac_bits(max(stats.percentile(float(arg)), np.finfo(np.float32).tiny), bits)
    base = dfp_frac_bits(stats.max_abs, bits)
    cands = [f for f in range(base, base + 5) if f <= 126]
    errors = [expected_sq_error(stats, Fixed(bits, f)) for f in cands]
    return cands[int(np.argmin(errors))]
