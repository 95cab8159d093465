"""Activation range calibration: one pass over the data for every tensor at once.

Dynamic fixed point (thesis 5.2.1), minifloat (6.3.1) and the range analysis of section 4.3 all
need the range of each layer's inputs and outputs on real data. Running the model once per layer
would multiply the cost by the number of layers, so :func:`calibrate` adds every wanted tensor as
an extra graph output of a copy of the model and runs the data through it once, in batches, while
:class:`RangeAccumulator` keeps running statistics per tensor. Memory stays bounded by one batch
plus a fixed-size histogram per tensor, however much data is streamed.

The histogram bins |x| by the top bits of its float32 pattern: exponent plus the 5 leading
mantissa bits, i.e. 32 bins per binade (about 2 % wide). That gives the log2 histogram of fig.
4.1/4.2 (sum the 32 bins of each exponent) and percentiles of |x| to within a bin, with one
integer shift per value and no ``log`` call.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.graph import runtime_inputs as graph_runtime_inputs
from ristretto_onnx.passes.save import needs_external_data, save_model
from ristretto_onnx.runtime.session import create_session

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


def calibrate(
    model: ModelProto,
    tensors: Iterable[str],
    data,
    *,
    batch_size: int = 64,
    threads: int | None = None,
) -> dict[str, RangeStats]:
    """Range statistics of ``tensors`` over ``data``, in one streamed pass.

    ``data`` is a :class:`~ristretto_onnx.data.Dataset` (read with ``batches(batch_size)``), an
    array (split into batches), or an iterable of arrays / ``(x, labels)`` pairs / ``{input: x}``
    dicts. Tensors may be graph inputs, intermediate tensors, graph outputs or constants.
    """
    wanted = list(dict.fromkeys(tensors))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    runtime_inputs = graph_runtime_inputs(model)
    graph_outputs = [o.name for o in graph.output]
    produced = {o for n in graph.node for o in n.output if o}
    for t in wanted:
        if t not in produced and t not in runtime_inputs and t not in initializers:
            raise RistrettoError(f"cannot calibrate {t!r}: no such tensor in the model")
    accs = {t: RangeAccumulator() for t in wanted}
    const_tensors = [t for t in wanted if t in initializers and t not in produced]
    if const_tensors:
        by_name = {t.name: t for t in graph.initializer}
        for t in const_tensors:
            accs[t].update(numpy_helper.to_array(by_name[t]))
    fed = [t for t in wanted if t in runtime_inputs]
    fetched = [t for t in wanted if t in produced]
    if fetched or fed:
        session, fetch_names = _session_with_outputs(model, fetched, graph_outputs, threads)
        batches = 0
        for feeds in _feeds(data, runtime_inputs, batch_size):
            batches += 1
            for t in fed:
                accs[t].update(feeds[t])
            if fetch_names:
                values = session.run(fetch_names, feeds)
                for name, value in zip(fetch_names, values):
                    accs[name].update(value)
        if not batches:
            raise RistrettoError("the calibration data is empty")
    return {t: accs[t].result() for t in wanted}


def _session_with_outputs(model: ModelProto, fetched: list[str], graph_outputs: list[str],
                          threads: int | None):
    """A session whose outputs include every tensor in ``fetched`` (on a copy of ``model``)."""
    probe = ModelProto()
    probe.CopyFrom(model)
    have = set(graph_outputs)
    for t in fetched:
        if t not in have:
            probe.graph.output.append(helper.make_tensor_value_info(t, TensorProto.UNDEFINED, None))
            have.add(t)
    # Untyped outputs are fine for onnxruntime; give float ones a type where shape inference
    # left one in value_info, so the check of output types does not trip on them.
    types = {vi.name: vi.type for vi in probe.graph.value_info}
    for out in probe.graph.output:
        if out.type.tensor_type.elem_type == TensorProto.UNDEFINED and out.name in types:
            out.type.CopyFrom(types[out.name])
    return session_any_size(probe, threads=threads), fetched


def session_any_size(model: ModelProto, *, threads: int | None = None):
    """``create_session`` for a proto of any size: above the 2 GB protobuf limit the model goes
    through a temporary file with external data (onnxruntime has read it once the session exists)."""
    if not needs_external_data(model):
        return create_session(model, threads=threads)
    with tempfile.TemporaryDirectory(prefix="ristretto-session-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path, external_data=True)
        return create_session(path, threads=threads)


def _feeds(data, runtime_inputs: list[str], batch_size: int):
    """Yield ``{input_name: batch}`` dicts from whatever ``data`` is."""
    if hasattr(data, "batches"):
        source: Iterable = (x for x, _ in data.batches(batch_size))
    elif isinstance(data, np.ndarray):
        source = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    else:
        source = data
    for item in source:
        if isinstance(item, Mapping):
            yield {k: np.asarray(v) for k, v in item.items()}
            continue
        if isinstance(item, tuple):
            item = item[0]
        if len(runtime_inputs) != 1:
            raise RistrettoError(f"the model has {len(runtime_inputs)} runtime inputs "
                                 f"({', '.join(runtime_inputs)}); give the data as dicts per input")
        yield {runtime_inputs[0]: np.ascontiguousarray(item, dtype=np.float32)}

