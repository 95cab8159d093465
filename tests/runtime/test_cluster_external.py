"""Issue 16: a model whose weights are in an external-data file on the Ray path. The actors read the
weights from the file themselves (the object store carries references, never the weights), weights
a pass computed (folded batch normalization) go through a scratch file, and ``compress`` and
``eval`` give the local backend's plan, report, bytes and metrics."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ristretto_onnx.passes import save as save_module
from ristretto_onnx.runtime import cluster_weights
from ristretto_onnx.zoo.store import package_dir

RAY = ["--backend", "ray", "--workers", "2"]


def _digits_with_bn(tmp_path, monkeypatch):
    """The digits CNN with a BatchNormalization after conv2, saved with its weights in big.onnx.data."""
    model = onnx.load(str(package_dir() / "digits-cnn.onnx"))
    conv2 = next(n for n in model.graph.node if "conv2.weight" in n.input)
    out = conv2.output[0]
    conv2.output[0] = "conv2_pre_bn"
    rng = np.random.default_rng(0)
    stats = {"bn.scale": rng.uniform(0.5, 1.5, 16), "bn.bias": rng.normal(0, 0.1, 16),
             "bn.mean": rng.normal(0, 0.1, 16), "bn.var": rng.uniform(0.5, 2.0, 16)}
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in stats.items())
    bn = helper.make_node("BatchNormalization", ["conv2_pre_bn", *stats], [out], name="bn")
    model.graph.node.insert(list(model.graph.node).index(conv2) + 1, bn)
    save_module.save_model(model, tmp_path / "plain.onnx")  # the same model, weights in the proto
    monkeypatch.setattr(save_module, "PROTO_LIMIT", 20_000)  # the 40 KB model counts as "> 2 GB"
    path = tmp_path / "big.onnx"
    save_module.save_model(model, path)
    header = onnx.load(str(path), load_external_data=False)
    assert {t.name for t in header.graph.initializer if t.data_location == TensorProto.EXTERNAL} >= \
        {"conv2.weight", "fc1.weight"}
    return path


@pytest.fixture
def shipped_models(monkeypatch):
    """Every model the RayRunners of the test serialize for their actors, parsed."""
    from ristretto_onnx.runtime import cluster

    seen = []
    real = cluster.shipped

    def spy(model, spill):
        data = real(model, spill)
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
        seen.append((proto, len(data), spill.path))
        return data

    monkeypatch.setattr(cluster, "shipped", spy)
    return seen


def _in_memory(proto) -> dict[str, int]:
    return {t.name: len(t.raw_data) for t in proto.graph.initializer
            if t.data_location != TensorProto.EXTERNAL and len(t.raw_data) >= 1024}


@pytest.mark.slow
def test_compress_and_eval_of_a_model_with_weights_on_disk_on_ray_equal_local(zoo_env, ray_cluster, tmp_path,
                                                                              monkeypatch, shipped_models, capsys):
    from ristretto_onnx.cli import main

    big = _digits_with_bn(tmp_path, monkeypatch)
    monkeypatch.setattr(cluster_weights, "SPILL_MIN_BYTES", 1024)  # the folded conv2 weights (4.6 KB) spill
    pkg = package_dir()
    args = ["compress", str(big), "OUT", "--data", str(pkg / "digits-test.npz"), "--calib",
            str(pkg / "digits-calib.npz"), "-q", "--scale", "1/255"]
    for name, extra in (("local", []), ("ray", RAY)):
        assert main([a if a != "OUT" else str(tmp_path / f"{name}.onnx") for a in args] + extra) == 0

    # what the actors got: the graph and references; the folded weights through the scratch file
    assert len(shipped_models) == 2  # the annotated and the FP32 model, once each
    for proto, size, spill in shipped_models:
        assert _in_memory(proto) == {} and size < 12_000  # the weights alone are 38 KB
        folded = next(t for t in proto.graph.initializer if t.name.startswith("conv2.weight"))
        assert folded.data_location == TensorProto.EXTERNAL
        assert str(spill).lstrip("/") in {e.value for e in folded.external_data}
    assert shipped_models[0][2] == shipped_models[1][2]  # one scratch file, the folded weights once

    reports = {}
    for name in ("local", "ray"):
        r = json.loads((tmp_path / f"{name}.json").read_text())
        for key in ("seconds", "sessions_built", "model", "input", "output"):
            r.pop(key, None)
        reports[name] = r
    assert reports["ray"] == reports["local"] and reports["local"]["final"] > 0.95
    assert (tmp_path / "ray.onnx.data").read_bytes() == (tmp_path / "local.onnx.data").read_bytes()
    headers = [onnx.load(str(tmp_path / f"{name}.onnx"), load_external_data=False) for name in ("local", "ray")]
    for header in headers:  # each names its own data file
        for t in header.graph.initializer:
            for e in t.external_data:
                e.value = "DATA" if e.key == "location" else e.value
    assert headers[0].SerializeToString() == headers[1].SerializeToString()

    # eval of the FP32 model from its path: its weights stay in big.onnx.data, read by the actors
    del shipped_models[:]
    metrics = ["--data", str(pkg / "digits-test.npz"), "--scale", "1/255", "--json", "-q"]
    out = {}
    capsys.readouterr()
    for name, extra in (("local", []), ("ray", RAY)):
        assert main(["eval", str(big), *metrics, *extra]) == 0
        out[name] = {k: v for k, v in json.loads(capsys.readouterr().out).items()
                     if k not in ("seconds", "images_per_s")}
    assert out["ray"] == out["local"] and out["local"]["n"] == 500 and out["local"]["top1"] > 0.95
    assert len(shipped_models) == 1 and _in_memory(shipped_models[0][0]) == {}
    assert shipped_models[0][1] < 4_000


def test_shipped_keeps_references_spills_computed_weights_once_and_removes_the_file(tmp_path, monkeypatch):
    from ristretto_onnx.passes.external import ROOT, resolve_locations, tensor_array

    model = onnx.load(str(package_dir() / "digits-cnn.onnx"))
    monkeypatch.setattr(save_module, "PROTO_LIMIT", 20_000)
    save_module.save_model(model, tmp_path / "big.onnx")
    light = onnx.load(str(tmp_path / "big.onnx"), load_external_data=False)
    resolve_locations(light, tmp_path)
    computed = numpy_helper.from_array(np.arange(2048, dtype=np.float32).reshape(2, 1024), "computed")
    light.graph.initializer.append(computed)
    monkeypatch.setattr(cluster_weights, "SCRATCH_ENV", "RISTRETTO_TEST_SCRATCH")
    monkeypatch.setenv("RISTRETTO_TEST_SCRATCH", str(tmp_path))
    monkeypatch.setattr(cluster_weights, "SPILL_MIN_BYTES", 4096)

    spill = cluster_weights.Spill()
    first = onnx.ModelProto.FromString(cluster_weights.shipped(light, spill))
    again = onnx.ModelProto.FromString(cluster_weights.shipped(light, spill))
    assert spill.path.parent == tmp_path.resolve() and spill.path.stat().st_size == 8192  # written once
    for proto in (first, again):
        by_name = {t.name: t for t in proto.graph.initializer}
        assert by_name["computed"].data_location == TensorProto.EXTERNAL
        assert np.array_equal(tensor_array(by_name["computed"]), numpy_helper.to_array(computed))
        for t in model.graph.initializer:  # weights on disk: the input's file, the same values
            assert np.array_equal(tensor_array(by_name[t.name]), numpy_helper.to_array(t))
            if t.ByteSize() > 1024:
                assert {e.key: e.value for e in by_name[t.name].external_data}["location"] == \
                    str((tmp_path / "big.onnx.data").relative_to(ROOT))
    spill.remove()
    assert not list(tmp_path.glob("ristretto-ray-*"))
    plain = cluster_weights.Spill()  # a model held in memory: its bytes, nothing written
    assert cluster_weights.shipped(model, plain) == model.SerializeToString() and plain.path is None


def test_a_folded_weight_read_from_disk_is_held_in_memory(zoo_env, tmp_path, monkeypatch):
    """Folding batch normalization into a weight on disk gives an in-memory weight (it was written
    out as an external tensor without a file): the search equals the in-proto model's."""
    from ristretto_onnx.cli import main

    big = _digits_with_bn(tmp_path, monkeypatch)
    pkg = package_dir()
    reports = {}
    for name, model in (("disk", big), ("proto", tmp_path / "plain.onnx")):
        assert main(["compress", str(model), str(tmp_path / f"{name}-out.onnx"), "--data",
                     str(pkg / "digits-test.npz"), "--calib", str(pkg / "digits-calib.npz"), "-q",
                     "--scale", "1/255"]) == 0
        r = json.loads((tmp_path / f"{name}-out.json").read_text())
        reports[name] = {k: v for k, v in r.items() if k not in ("seconds", "sessions_built", "model", "output")}
    assert reports["disk"] == reports["proto"] and reports["disk"]["categories"]
