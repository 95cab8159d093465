"""Issue 16 acceptance: compress on a local 2-CPU Ray cluster equals the local backend, even when
an actor is killed mid-run; plans of different categories are in flight at the same time."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from ristretto_onnx.compress import compress  # noqa: E402
from ristretto_onnx.options import Backend  # noqa: E402
from ristretto_onnx.runtime import cluster  # noqa: E402


def _report(result) -> dict:
    d = result.report.to_dict()
    d.pop("seconds")
    return d


#: Per-layer widths: the search's per-layer sensitivities are independent plans, scored concurrently.
#: ``test``: a held-out pass scored in the driver after the search.
ARGS = dict(scheme="dfp", tolerance=0.01, granularity="layer")


def _test_set():
    from ristretto_onnx import zoo

    return zoo.model_dataset("lenet-mnist", "test").take(1000)


@pytest.fixture(scope="module")
def local(shared_zoo):
    return compress("zoo:lenet-mnist", test=_test_set(), **ARGS)


@pytest.mark.slow
def test_ray_finds_the_plan_metric_and_report_of_the_local_backend(zoo_env, ray_cluster, local, monkeypatch):
    in_flight = []  # how many plans have batches queued on the actors at once, after each announcement
    categories = []  # ... of them, how many quantize groups no other of them quantizes (stage 1: a category each)
    real = cluster.RayRunner.ahead

    def ahead(self, plans, depth):
        real(self, plans, depth)
        queued = {key for key, _ in self._pending if key is not None}
        in_flight.append(len(queued))
        groups = [frozenset(g for g, _ in key) for key in queued]
        categories.append(sum(all(a.isdisjoint(b) for j, b in enumerate(groups) if j != i)
                              for i, a in enumerate(groups)))

    monkeypatch.setattr(cluster.RayRunner, "ahead", ahead)
    remote = compress("zoo:lenet-mnist", test=_test_set(), backend=Backend("ray", workers=2), **ARGS)
    assert max(in_flight) >= 2  # conv1 and conv2 weights one bit narrower, together
    # the per-category binary searches: activations, conv and fc weights probed at once
    assert max(categories) == 3
    assert local.report.test_final is not None and local.report.n_test_images == 1000
    assert (remote.report.test_baseline, remote.report.test_final) == (local.report.test_baseline,
                                                                       local.report.test_final)
    assert remote.plan == local.plan
    assert remote.report.final == local.report.final
    assert _report(remote) == _report(local)
    assert remote.model.SerializeToString() == local.model.SerializeToString()


@pytest.mark.slow
def test_a_killed_actor_is_replaced_and_the_result_does_not_change(zoo_env, ray_cluster, local, monkeypatch):
    real = cluster.RayRunner.run_batch
    calls = {"n": 0}

    def run_batch(self, plan, k):
        calls["n"] += 1
        if calls["n"] == 60:  # mid-search: one actor dies with work queued on it
            ray_cluster.kill(self.actors[1])
        return real(self, plan, k)

    monkeypatch.setattr(cluster.RayRunner, "run_batch", run_batch)
    remote = compress("zoo:lenet-mnist", test=_test_set(), backend=Backend("ray", workers=2), **ARGS)
    assert calls["n"] > 60
    assert _report(remote) == _report(local)
    assert remote.model.SerializeToString() == local.model.SerializeToString()


def test_backend_options_are_checked():
    from ristretto_onnx.errors import RistrettoError

    with pytest.raises(RistrettoError, match="--backend must be local or ray"):
        Backend("spark")
    with pytest.raises(RistrettoError, match="--workers must be at least 1"):
        Backend("ray", workers=0)


def test_cli_backend_is_a_usage_error_when_unknown(tmp_path):
    from ristretto_onnx.cli import main

    out = tmp_path / "o.onnx"
    assert main(["compress", "zoo:digits-cnn", str(out), "--backend", "spark"]) == 2
    assert main(["compress", "zoo:digits-cnn", str(out), "--backend", "ray", "--workers", "0"]) == 2
    assert not out.exists()
