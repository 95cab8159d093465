"""Issue 16 acceptance: compress on a local 2-CPU Ray cluster equals the local backend, even when
an actor is killed mid-run."""

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


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local(shared_zoo):
    return compress("zoo:lenet-mnist", scheme="dfp", tolerance=0.01)


@pytest.mark.slow
def test_ray_finds_the_plan_metric_and_report_of_the_local_backend(zoo_env, ray_cluster, local):
    remote = compress("zoo:lenet-mnist", scheme="dfp", tolerance=0.01, backend=Backend("ray", workers=2))
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
    remote = compress("zoo:lenet-mnist", scheme="dfp", tolerance=0.01, backend=Backend("ray", workers=2))
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
