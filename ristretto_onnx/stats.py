"""Range statistics of a group of numbers: pure numpy, no model and no runtime.

Every format rule needs the same few facts about the numbers it will represent (thesis 4.3,
5.2.1, 6.3.1): the largest magnitude, how the magnitudes are spread (the log2 histogram of
fig. 4.1/4.2) and which share a format saturates or rounds to zero. Weights give them directly
(:meth:`RangeStats.of`), layer inputs and outputs through calibration
(:mod:`ristretto_onnx.runtime.calibrate`), which streams batches into a
:class:`RangeAccumulator`. The scheme rules (:mod:`ristretto_onnx.schemes`) import only this
module, never the runtime.

The histogram bins |x| by the top bits of its float32 pattern: exponent plus the 5 leading
mantissa bits, i.e. 32 bins per binade (about 2 % wide). That gives the log2 histogram of fig.
4.1/4.2 (sum the 32 bins of each exponent) and percentiles of |x| to within a bin, with one
integer shift per value and no ``log`` call.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_MANT_BITS_KEPT = 5
_SHIFT = 23 - _MANT_BITS_KEPT
#: Bins per binade of the fine histogram.
BINS_PER_OCTAVE = 1 << _MANT_BITS_KEPT
#: Fine bins for every finite float32 magnitude (bins past this index are inf/NaN).
_N_FINITE_BINS = 0x7F800000 >> _SHIFT
_N_BINS = (0x80000000 >> _SHIFT)

DEFAULT_PERCENTILES = (99.0, 99.9, 99.99)


@dataclass(frozen=True)
class RangeStats:
    """Range statistics of one tensor (or group of numbers).

    ``hist`` counts |x| in fine bins starting at bin ``hist_start`` (see the module docstring);
    it is trimmed to the occupied bins. Zeros are in ``zeros`` and also in bin 0.
    """

    count: int
    min: float
    max: float
    zeros: int
    nonfinite: int
    hist_start: int = field(repr=False)
    hist: np.ndarray = field(repr=False, compare=False)

    @property
    def max_abs(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    @classmethod
    def of(cls, x) -> RangeStats:
        """Statistics of an array (weights, a bias): the same numbers calibration computes."""
        acc = RangeAccumulator()
        acc.update(np.asarray(x))
        return acc.result()

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of |x|, within one fine bin, never above ``max_abs``."""
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
        finite = self.count - self.nonfinite
        if finite <= 0:
            return 0.0
        target = q / 100.0 * finite
        cum = np.cumsum(self.hist)
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, len(self.hist) - 1)
        below = cum[i - 1] if i > 0 else 0
        in_bin = self.hist[i]
        frac = 0.0 if in_bin == 0 else (target - below) / in_bin
        lo, hi = _bin_edges(self.hist_start + i)
        return float(min(lo + frac * (hi - lo), self.max_abs))

    def log2_histogram(self) -> dict[int, int]:
        """Nonzero |x| counted by ``floor(log2 |x|)`` (fig. 4.1/4.2); zeros are :attr:`zeros`."""
        out: dict[int, int] = {}
        bins = np.nonzero(self.hist)[0]
        for i in bins:
            b = self.hist_start + int(i)
            exp_field = b >> _MANT_BITS_KEPT
            e = exp_field - 127 if exp_field > 0 else -127  # subnormals: below 2^-126
            n = int(self.hist[i]) - (self.zeros if b == 0 else 0)
            if n:
                out[e] = out.get(e, 0) + n
        return dict(sorted(out.items()))

    def fraction_above(self, limit: float) -> float:
        """Share of values with |x| > ``limit`` (e.g. the saturated share of a format), per bin."""
        if self.count == 0:
            return 0.0
        bits = int(np.float32(abs(limit)).view(np.uint32)) >> _SHIFT
        start = max(bits + 1 - self.hist_start, 0)
        return float(self.hist[start:].sum() + self.nonfinite) / self.count

    def fraction_below(self, limit: float) -> float:
        """Share of nonzero values with |x| < ``limit`` (e.g. those a format rounds to zero), per bin."""
        if self.count == 0:
            return 0.0
        bits = int(np.float32(abs(limit)).view(np.uint32)) >> _SHIFT
        stop = min(max(bits - self.hist_start, 0), len(self.hist))
        return float(self.hist[:stop].sum() - (self.zeros if self.hist_start == 0 and stop else 0)) / self.count

    def to_dict(self, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
        return {
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "max_abs": self.max_abs,
            "zeros": self.zeros,
            "nonfinite": self.nonfinite,
            "percentiles_abs": {_pct_key(q): self.percentile(q) for q in percentiles},
            "log2_histogram": {str(e): n for e, n in self.log2_histogram().items()},
        }


def bin_centers(stats: RangeStats) -> tuple[np.ndarray, np.ndarray]:
    """(centers, counts) of the occupied fine bins of |x| (range rules evaluate errors on them)."""
    idx = stats.hist_start + np.arange(len(stats.hist), dtype=np.int64)
    lo = (idx << _SHIFT).astype(np.uint32).view(np.float32).astype(np.float64)
    hi = (np.minimum((idx + 1) << _SHIFT, 0x7F800000)).astype(np.uint32).view(np.float32).astype(np.float64)
    return (lo + hi) / 2, np.asarray(stats.hist, dtype=np.float64)


def _pct_key(q: float) -> str:
    return f"p{q:g}"


def _bin_edges(b: int) -> tuple[float, float]:
    lo = np.array([b << _SHIFT], dtype=np.uint32).view(np.float32)[0]
    hi = np.array([min((b + 1) << _SHIFT, 0x7F800000)], dtype=np.uint32).view(np.float32)[0]
    return float(lo), float(hi)


def _fine_bins(x: np.ndarray) -> np.ndarray:
    """Fine bin index of each |x|: the top 13 bits of the float32 pattern after the sign."""
    if sys.byteorder == "little":  # the high half-word holds sign, exponent and 7 mantissa bits
        high = x.view(np.uint16)[1::2]
        return (high & np.uint16(0x7FFF)) >> np.uint16(_SHIFT - 16)
    return ((x.view(np.uint32) & np.uint32(0x7FFFFFFF)) >> np.uint32(_SHIFT)).astype(np.intp)


class RangeAccumulator:
    """Running :class:`RangeStats` of the values seen by :meth:`update` (any number of batches)."""

    def __init__(self) -> None:
        self.count = 0
        self.zeros = 0
        self.nonfinite = 0
        self.min = math.inf
        self.max = -math.inf
        self.hist = np.zeros(_N_BINS, dtype=np.int64)

    def update(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if x.size == 0:
            return
        counts = np.bincount(_fine_bins(x), minlength=_N_BINS)
        self.hist += counts[:_N_BINS]
        nonfinite = int(counts[_N_FINITE_BINS:].sum())
        self.nonfinite += nonfinite
        self.zeros += int(np.count_nonzero(x == 0))
        self.count += x.size
        if nonfinite:
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    def result(self) -> RangeStats:
        finite = self.hist[:_N_FINITE_BINS]
        occupied = np.nonzero(finite)[0]
        if occupied.size == 0:
            lo, hist = 0, np.zeros(1, dtype=np.int64)
        else:
            lo, hi = int(occupied[0]), int(occupied[-1]) + 1
            hist = finite[lo:hi].copy()
        hist.flags.writeable = False
        empty = self.count == self.nonfinite
        return RangeStats(self.count, 0.0 if empty else self.min, 0.0 if empty else self.max,
                          self.zeros, self.nonfinite, lo, hist)


#: The thesis's categories of numbers (tables 5.1/5.2), searched one at a time; ``bias`` only
#: when asked for (biases stay float by default, as in the thesis).
CATEGORIES = ("activations", "conv_weights", "fc_weights")


@dataclass(frozen=True)
class GroupRange:
    """What the format rules know of one group: its range, overall and per output channel.

    Built by the range stage (:func:`ristretto_onnx.ranges.measure_groups`) and read by the
    scheme rules (:mod:`ristretto_onnx.schemes`), the search and the reports.
    """

    group: str
    role: str  # inputs | weights | outputs | bias
    kind: str  # conv | fc
    max_abs: float
    channel_max_abs: tuple[float, ...] | None = field(default=None, repr=False)
    channel_axis: int | None = None
    size: int = 0  # number of values (weights: parameter count; activations: per image)
    stats: RangeStats | None = field(default=None, repr=False, compare=False)
    #: One RangeStats per output channel (weights), so range rules work per channel too.
    channel_stats: tuple[RangeStats, ...] | None = field(default=None, repr=False, compare=False)
    #: A layer output bounded by a Clip (ReLU6): measured after the Clip, and the thesis's
    #: "one integer bit fewer for outputs" does not apply (see passes.analysis.clip_bounds).
    bounded: bool = False
    #: The group's own statistics when ``stats`` are those of a wider group it is tied to
    #: (layer outputs sharing a Concat buffer); otherwise ``stats``.
    measured: RangeStats | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.measured is None:
            object.__setattr__(self, "measured", self.stats)

    @property
    def layer_output(self) -> bool:
        """Whether the thesis's layer-output rule (one integer bit fewer) applies."""
        return self.role == "outputs" and not self.bounded

    @property
    def category(self) -> str:
        if self.role in ("inputs", "outputs"):
            return "activations"
        if self.role == "weights":
            return f"{self.kind}_weights"
        return "bias"


def category_groups(ranges: Sequence[GroupRange], category: str) -> list[GroupRange]:
    return [r for r in ranges if r.category == category]
