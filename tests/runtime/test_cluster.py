"""The Ray backend: shards, identical outputs to the local Simulator, actors replaced on death."""

from __future__ import annotations

import sys

import pytest

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.runtime.cluster import deal, import_ray


@pytest.mark.parametrize("n,workers,expected", [
    (5, 2, [[0, 2, 4], [1, 3]]),
    (2, 4, [[0], [1]]),
    (3, 1, [[0, 1, 2]]),
])
def test_batches_are_dealt_round_robin(n, workers, expected):
    assert deal(n, workers) == expected


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RistrettoError, match=r"pip install 'ristretto-onnx\[ray\]'"):
        import_ray()
