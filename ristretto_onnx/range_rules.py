"""Range rules: which fractional length a dynamic fixed point group gets from its statistics.

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

import numpy as np

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed, Minifloat, dfp_frac_bits
from ristretto_onnx.stats import RangeStats, bin_centers

RULES = ("max", "percentile", "mse")


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
