"""ristretto_onnx.zoo: the catalog against MANIFEST.json, the search path, sha256 checks, the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ristretto_onnx import zoo
from ristretto_onnx.cli import main
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.zoo import store
from ristretto_onnx.zoo.entries import DatasetEntry, ModelEntry

SHARED_NAMES = {"lenet-mnist", "resnet20-cifar10", "resnet32-cifar10", "resnet44-cifar10",
                "squeezenet1.1-imagenet", "mnist-train", "mnist-test", "cifar10-train",
                "cifar10-test", "imagenet-sample"}


def test_every_required_entry_is_registered_once():
    names = [e.name for e in zoo.list_entries()]
    assert len(names) == len(set(names))
    assert SHARED_NAMES | {"digits-cnn", "digits-test", "digits-calib"} == set(names)
    assert {e.name for e in zoo.list_entries("model")} == {n for n in names
                                                           if isinstance(zoo.get(n), ModelEntry)}
    for model in zoo.list_entries("model"):
        assert isinstance(zoo.get(model.dataset), DatasetEntry)
        assert isinstance(zoo.get(model.calib_dataset), DatasetEntry)


def test_get_accepts_prefix_case_and_aliases_and_suggests():
    assert zoo.get("zoo:LeNet-MNIST").name == "lenet-mnist"
    assert zoo.get("cifar10-train-subset-10k").name == "cifar10-train"
    with pytest.raises(RistrettoError, match="did you mean resnet20-cifar10"):
        zoo.get("resnet20-cifar")
    with pytest.raises(RistrettoError, match="is a dataset, not a model"):
        zoo.model_dataset("mnist-test")
    with pytest.raises(RistrettoError, match="unknown split 'val'"):
        zoo.model_dataset("lenet-mnist", split="val")


def test_catalog_matches_the_manifest(shared_zoo):
    manifest = json.loads((shared_zoo / "MANIFEST.json").read_text())
    by_path = {f["path"]: f for f in manifest["files"]}
    checked = set()
    for entry in zoo.list_entries():
        for file in entry.files:
            if file.embedded:
                continue
            record = by_path[file.path]
            assert file.sha256 == record.get("sha256", record.get("tree_sha256")), file.path
            assert file.size == record["bytes"], file.path
            checked.add(file.path)
        if isinstance(entry, ModelEntry) and not entry.file.embedded:
            record = by_path[entry.file.path]
            assert entry.fp32_top1_measured == record["fp32_top1_measured"]
            assert entry.fp32_top1_published == record["fp32_top1_published"]
            assert entry.fp32_top5_measured == record.get("fp32_top5_measured")
            assert entry.input_shape == tuple(record["io"]["input_shape"][1:])
            assert by_path[record["dataset"]] is by_path[zoo.get(entry.dataset).file.path]
            pre = record["preprocessing"]
            assert entry.preprocess.mean == (tuple(pre["mean"]) if pre["mean"] else None)
            assert entry.preprocess.std == (tuple(pre["std"]) if pre["std"] else None)
            assert (entry.preprocess.scale or 1.0) == pytest.approx(pre["scale"], abs=1e-15)
            assert entry.preprocess.crop == pre.get("center_crop")
            assert entry.preprocess.resize == pre.get("resize_short_side")
        if isinstance(entry, DatasetEntry) and entry.classes and not entry.file.embedded:
            record = by_path[entry.file.path]
            assert list(entry.classes) == record["classes"]
            assert entry.count == sum(record["class_counts"])
    assert checked == {p for p, f in by_path.items() if f["kind"] in ("model", "dataset", "labels")}


def test_resolve_model_from_zoo_name_path_and_errors(zoo_env, tmp_path):
    path = zoo.resolve_model("zoo:lenet-mnist")
    assert path == zoo_env / "models/lenet-mnist.onnx"
    assert zoo.resolve_model("lenet-mnist") == path
    assert zoo.resolve_model(str(path)) == path
    with pytest.raises(RistrettoError, match="model not found: nope.onnx .*zoo:NAME"):
        zoo.resolve_model("nope.onnx")
    with pytest.raises(RistrettoError, match="is a folder"):
        zoo.resolve_model(tmp_path)


def test_missing_file_says_what_to_set(empty_zoo_env):
    with pytest.raises(RistrettoError) as err:
        zoo.resolve_model("zoo:lenet-mnist")
    message = str(err.value)
    assert "zoo file models/lenet-mnist.onnx not found in RISTRETTO_ZOO=" in message
    assert str(empty_zoo_env) in message and "ristretto-onnx" in message
    assert "set RISTRETTO_ZOO=/path/to/zoo" in message and "\n" not in message
    assert not zoo.get("lenet-mnist").found and zoo.get("digits-cnn").found


def test_relative_search_path_resolves_against_the_current_directory(zoo_env, monkeypatch):
    monkeypatch.chdir(zoo_env.parent)
    monkeypatch.setenv("RISTRETTO_ZOO", f"does-not-exist:{zoo_env.name}")
    assert zoo.search_path()[1] == zoo_env.parent / zoo_env.name
    assert zoo.resolve_model("zoo:lenet-mnist").samefile(zoo_env / "models/lenet-mnist.onnx")


def test_cache_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert zoo.cache_dir() == tmp_path / "ristretto-onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert zoo.cache_dir() == Path.home() / ".cache" / "ristretto-onnx"


def _copy_model(shared_zoo: Path, root: Path) -> Path:
    target = root / "models" / "lenet-mnist.onnx"
    target.parent.mkdir(parents=True)
    shutil.copyfile(shared_zoo / "models/lenet-mnist.onnx", target)
    return target


def test_sha256_mismatch_is_detected(shared_zoo, empty_zoo_env):
    copy = _copy_model(shared_zoo, empty_zoo_env)
    assert zoo.resolve_model("zoo:lenet-mnist") == copy
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(RistrettoError, match="has sha256 .* expected 556d1dab2822.*damaged"):
        zoo.resolve_model("zoo:lenet-mnist")


def test_digests_are_cached_by_size_and_mtime(shared_zoo, empty_zoo_env, monkeypatch):
    copy = _copy_model(shared_zoo, empty_zoo_env)
    calls = []
    original = store._hash_file
    monkeypatch.setattr(store, "_hash_file", lambda p: calls.append(p) or original(p))
    monkeypatch.setattr(store, "_DIGESTS", store._DigestCache())
    zoo.resolve_model("zoo:lenet-mnist")
    zoo.resolve_model("zoo:lenet-mnist")
    assert calls == [copy]
    monkeypatch.setattr(store, "_DIGESTS", store._DigestCache())  # a new process: reads disk
    zoo.resolve_model("zoo:lenet-mnist")
    assert calls == [copy]
    assert (store.cache_dir() / "sha256-cache.json").is_file()
    copy.write_bytes(copy.read_bytes()[:-1])  # changed size: hashed again, and rejected
    with pytest.raises(RistrettoError, match="sha256"):
        zoo.resolve_model("zoo:lenet-mnist")
    assert calls == [copy, copy]


def test_folder_entries_are_verified_by_tree_digest(zoo_env):
    entry = zoo.get("imagenet-sample")
    assert entry.locate() == zoo_env / "datasets/imagenet-sample"


def test_download_into_cache_with_verification(empty_zoo_env, tmp_path):
    payload = b"zoo payload"
    source = tmp_path / "remote.bin"
    source.write_bytes(payload)
    good = store.ZooFile("extra/remote.bin", hashlib.sha256(payload).hexdigest(),
                         url=source.as_uri())
    path = store.locate(good)
    assert path == store.cache_dir() / "extra/remote.bin" and path.read_bytes() == payload
    assert store.locate(good, fetch=False) == path  # found in the cache next time
    bad = store.ZooFile("extra/other.bin", "0" * 64, url=source.as_uri())
    with pytest.raises(RistrettoError, match="not found .*download failed: .*gave sha256"):
        store.locate(bad)
    assert sorted(p.name for p in (store.cache_dir() / "extra").iterdir()) == ["remote.bin"]


def test_model_datasets_have_the_model_preprocessing(zoo_env):
    calib = zoo.model_dataset("lenet-mnist", split="calib")
    assert calib.name == "zoo:mnist-train" and len(calib) == 60000
    assert calib.preprocess == zoo.get("lenet-mnist").preprocess
    assert len(zoo.model_dataset("resnet32-cifar10", "test")) == 10000
    assert zoo.model_dataset("resnet32-cifar10", "calib").name == "zoo:cifar10-train"


def _top1(name: str) -> float:
    session = create_session(zoo.resolve_model(f"zoo:{name}"))
    correct = total = 0
    for x, y in zoo.model_dataset(name).batches(250):
        correct += int((session.run(None, {"input": x})[0].argmax(axis=1) == y).sum())
        total += len(y)
    return correct / total


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet-mnist", "resnet20-cifar10", "squeezenet1.1-imagenet"])
def test_fp32_top1_reproduces_the_recorded_accuracy(zoo_env, name):
    assert _top1(name) == zoo.get(name).fp32_top1_measured


def test_cli_list_info_eval(zoo_env, capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "lenet-mnist" in out and "99.01 %" in out and "91.73 %" in out
    assert all(line.split()[2] == "found" for line in out.splitlines()[1:14])
    assert main(["zoo", "list", "--json", "--kind", "model"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"] for r in rows} == {e.name for e in zoo.list_entries("model")}
    assert main(["zoo", "info", "resnet20-cifar10"]) == 0
    out = capsys.readouterr().out
    assert "scale=1/255;mean=0.485,0.456,0.406;std=0.229,0.224,0.225" in out
    assert str(zoo_env / "models/resnet20-cifar10.onnx") in out
    assert main(["zoo", "eval", "lenet-mnist", "--limit", "500", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 500 and 0.97 < result["top1"] <= 1.0


def test_cli_errors_are_one_line(empty_zoo_env, capsys):
    assert main(["zoo", "eval", "lenet-mnist"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RISTRETTO_ZOO" in err
    assert main(["zoo", "info", "no-such-model"]) == 1
    assert "unknown zoo entry 'no-such-model'" in capsys.readouterr().err
    assert main(["zoo", "list"]) == 0
    assert "missing" in capsys.readouterr().out


def test_shared_data_arrays_are_not_copied(zoo_env):
    """A subset is a view by index: the raw array is shared, not copied."""
    ds = zoo.model_dataset("resnet20-cifar10")
    assert ds.subset(10).images is ds.images
    assert np.shares_memory(ds.take(5).images, ds.images)
