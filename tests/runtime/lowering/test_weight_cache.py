"""The Simulator's weight cache: bounded, dropping the least recently used weights first."""

import numpy as np
import onnx_graphsurgeon as gs

from ristretto_onnx.formats import parse_format, quantize
from ristretto_onnx.runtime.lowering.quantizers import WeightCache


def _weight(name: str, seed: int) -> gs.Constant:
    return gs.Constant(name, np.random.default_rng(seed).normal(size=(16, 16)).astype(np.float32))


def test_a_full_cache_drops_the_least_recently_used_weight_only():
    fmt = parse_format("fixed:8:6")
    a, b, c = _weight("a", 0), _weight("b", 1), _weight("c", 2)
    cache = WeightCache(max_bytes=2 * a.values.nbytes)
    qa = cache.get(a, fmt, "nearest_even")
    cache.get(b, fmt, "nearest_even")
    assert cache.get(a, fmt, "nearest_even") is qa  # a hit, now the most recent
    qc = cache.get(c, fmt, "nearest_even")  # full: b goes, a stays
    assert cache.get(a, fmt, "nearest_even") is qa and cache.get(c, fmt, "nearest_even") is qc
    assert np.array_equal(qa, quantize(a.values, fmt)) and np.array_equal(qc, quantize(c.values, fmt))
    assert len(cache._items) == 2 and ("b", str(fmt), "nearest_even") not in cache._items
