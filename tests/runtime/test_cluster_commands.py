"""Issue 16: ``eval`` and ``quantize`` with ``--backend ray`` give the local backend's numbers and
bytes, on a local 2-CPU Ray cluster whose actors read their shards from the zoo's files."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray")

from ristretto_onnx.cli import main  # noqa: E402
from ristretto_onnx.runtime import cluster  # noqa: E402

RAY = ["--backend", "ray", "--workers", "2"]


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def read_by_actors(monkeypatch):
    """Whether every RayRunner of the test had its actors read their own shards."""
    seen = []
    real = cluster.RayRunner.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append(self.read_by_actors)

    monkeypatch.setattr(cluster.RayRunner, "__init__", init)
    return seen


@pytest.mark.slow
def test_quantize_then_eval_on_ray_equal_the_local_backend(zoo_env, ray_cluster, tmp_path, capsys,
                                                           read_by_actors, monkeypatch):
    in_flight = []  # plans with batches queued on the actors at once
    real_ahead = cluster.RayRunner.ahead

    def ahead(self, plans, depth):
        real_ahead(self, plans, depth)
        in_flight.append(len({key for key, _ in self._pending}))

    monkeypatch.setattr(cluster.RayRunner, "ahead", ahead)
    # fixed point scores each integer/fractional split of a width: independent plans
    args = ["quantize", "zoo:lenet-mnist", "--scheme", "fixed", "--bits", "6", "--json"]
    out = {}
    for name, extra in (("local", []), ("ray", RAY)):
        path = tmp_path / f"{name}.onnx"
        assert main(args[:2] + [str(path)] + args[2:] + extra) == 0
        sidecar = _json(capsys)
        sidecar.pop("seconds", None)
        sidecar.pop("output")
        out[name] = (path.read_bytes(), sidecar)
    assert out["ray"][0] == out["local"][0]
    assert out["ray"][1] == out["local"][1]
    assert len(out["local"][1]["variant_search"]) > 1 and max(in_flight) > 1
    assert read_by_actors == [True]

    # the written simulated model (a Simulator in each actor) and its FP32 reference (fidelity)
    sim = str(tmp_path / "local.onnx")
    metrics = ["--metric", "top1", "--metric", "top5", "--metric", "fidelity", "--reference", "zoo:lenet-mnist"]
    evals = {}
    for name, extra in (("local", []), ("ray", RAY)):
        for model in ("zoo:lenet-mnist", sim):
            assert main(["eval", model, "--data", "zoo:mnist-test", "--json", "-q", *metrics, *extra]) == 0
            evals[name, model] = {k: v for k, v in _json(capsys).items() if k not in ("seconds", "images_per_s")}
    assert evals["local", "zoo:lenet-mnist"] == {"top1": 0.9901, "top5": 1.0, "fidelity": 1.0, "n": 10000}
    assert evals["local", sim]["fidelity"] < 1.0
    for model in ("zoo:lenet-mnist", sim):
        assert evals["ray", model] == evals["local", model]
    assert read_by_actors and all(read_by_actors)


def test_eval_and_quantize_check_the_backend_flags(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o.onnx"
    assert main(["eval", "zoo:digits-cnn", "--backend", "spark"]) == 2
    assert main(["quantize", "zoo:digits-cnn", str(out), "--scheme", "dfp", "--bits", "8", *RAY[:2],
                 "--workers", "0"]) == 2
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # Ray not installed
    assert main(["quantize", "zoo:digits-cnn", str(out), "--scheme", "dfp", "--bits", "8", *RAY]) == 1
    assert "pip install 'ristretto-onnx[ray]'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_in_memory_data_is_shipped_and_an_unreadable_shard_is_one_clear_error(zoo_env, ray_cluster, tmp_path,
                                                                              read_by_actors):
    import numpy as np

    from ristretto_onnx import zoo
    from ristretto_onnx.data import load_dataset
    from ristretto_onnx.errors import RistrettoError
    from ristretto_onnx.options import Backend
    from ristretto_onnx.runtime.evaluate import evaluate

    model = zoo.resolve_model("zoo:lenet-mnist")
    mnist = zoo.model_dataset("lenet-mnist", "test").take(600)
    images, labels = mnist.images[:600], mnist.labels  # arrays held in memory: no source to read
    in_memory = load_dataset(images, zoo.get_model("lenet-mnist").preprocess, labels=labels)
    local = evaluate(model, in_memory, ["top1", "top5"])
    assert dict(evaluate(model, in_memory, ["top1", "top5"], backend=Backend("ray", workers=2)).metrics) == \
        dict(local.metrics)
    assert read_by_actors == [False] and local["top1"] > 0.97

    path = tmp_path / "d.npz"  # uncompressed: the workers memory-map it by its path
    np.savez(path, images=images, labels=labels)
    data = load_dataset(path, zoo.get_model("lenet-mnist").preprocess)
    assert dict(evaluate(model, data, ["top1", "top5"], backend=Backend("ray", workers=2)).metrics) == \
        dict(local.metrics)
    assert read_by_actors == [False, True]
    path.unlink()  # e.g. a path the cluster's nodes do not share
    with pytest.raises(RistrettoError, match=f"a worker cannot read {path}"):
        evaluate(model, data, backend=Backend("ray", workers=1))
