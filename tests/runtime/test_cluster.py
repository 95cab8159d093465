"""The Ray backend: shards, identical outputs to the local Simulator, actors replaced on death."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.runtime.cluster import import_ray, shard_bounds


@pytest.mark.parametrize("sizes,workers,expected", [
    ([256] * 7 + [208], 2, [(0, 4), (4, 8)]),
    ([10] * 3, 5, [(0, 1), (1, 2), (2, 3)]),
    ([5, 100, 5], 2, [(0, 1), (1, 3)]),
    ([1] * 10, 3, [(0, 3), (3, 7), (7, 10)]),
    ([7], 4, [(0, 1)]),
])
def test_shards_are_contiguous_and_cover_every_batch(sizes, workers, expected):
    bounds = shard_bounds(sizes, workers)
    assert bounds == expected
    assert bounds[0][0] == 0 and bounds[-1][1] == len(sizes)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RistrettoError, match=r"pip install 'ristretto-onnx\[ray\]'"):
        import_ray()


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_outputs_equal_the_local_simulator_and_survive_a_killed_actor(ray_cluster):
    from ristretto_onnx import zoo
    from ristretto_onnx.passes.pipeline import prepare
    from ristretto_onnx.runtime.cluster import RayBackend
    from ristretto_onnx.runtime.simulator import Simulator

    prepared = prepare(str(zoo.resolve_model("zoo:digits-cnn")))
    ds = zoo.model_dataset("digits-cnn", "test")
    batches = [np.ascontiguousarray(x, np.float32) for x, _ in ds.batches(64)]
    sim = Simulator(prepared.annotated)
    plan = {g: "fixed:5:3" for g in sim.targets}
    sim.set_formats(plan, replace=True)
    expected = [sim.run(x) for x in batches]

    backend = RayBackend(prepared.annotated, batches, workers=2)
    try:
        got = backend.run_batches(plan, 0, len(batches))
        assert len(got) == len(expected)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))
        ray_cluster.kill(backend.actors[0])
        got = backend.run_batches(plan, 1, len(batches))
        assert all(np.array_equal(a, b) for a, b in zip(got, expected[1:]))
        assert backend.restarts == 1
    finally:
        backend.close()
