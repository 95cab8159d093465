"""Models over 2 GB (issue 10, Deliver 8): external data through ``quantize`` and ``compress``.

The 2 GB protobuf limit is lowered (``passes.save.PROTO_LIMIT``) so the embedded digits CNN takes
every path a > 2 GB model takes: it is read with its ``.data`` file, checked and inferred from
disk, run through sessions built from files, and written as ``OUT.onnx`` + ``OUT.onnx.data``.
The results must equal those of the ordinary in-memory path, bit for bit. Peak memory on a real
2.5 GB model is measured by ``bench/external_data.py`` (not in CI).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from ristretto_onnx.cli import main
from ristretto_onnx.passes import external as external_module
from ristretto_onnx.passes import save as save_module
from ristretto_onnx.runtime import lowering
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.zoo.store import package_dir

FLAGS = ["--scale", "1/255"]
COMMANDS = {
    "quantize": ["quantize", "IN", "OUT", "--scheme", "dfp", "--bits", "6", "--calib", "CALIB", *FLAGS],
    "compress": ["compress", "IN", "OUT", "--data", "TEST", "--calib", "CALIB", "-q", *FLAGS],
}


def _argv(command: str, model, out) -> list[str]:
    pkg = package_dir()
    subs = {"IN": str(model), "OUT": str(out), "CALIB": str(pkg / "digits-calib.npz"),
            "TEST": str(pkg / "digits-test.npz")}
    return [subs.get(a, a) for a in COMMANDS[command]]


def _outputs(path) -> np.ndarray:
    with np.load(package_dir() / "digits-test.npz") as d:
        x = (d["images"][:64, None].astype(np.float32) / np.float32(255))
    return create_session(str(path)).run(None, {"input": x})[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_external_data_model_goes_through_and_matches_the_in_memory_path(tmp_path, monkeypatch, capsys, command):
    model = onnx.load(str(package_dir() / "digits-cnn.onnx"))
    plain = tmp_path / "plain.onnx"
    assert main(_argv(command, package_dir() / "digits-cnn.onnx", plain)) == 0, capsys.readouterr().err

    monkeypatch.setattr(save_module, "PROTO_LIMIT", 20_000)  # the 40 KB model now counts as "> 2 GB"
    monkeypatch.setattr(external_module, "CHUNK_BYTES", 256)  # weights read and quantized in several chunks
    monkeypatch.setattr(lowering, "FED_MIN_BYTES", 0)  # the simulator feeds every weight
    big = tmp_path / "big.onnx"
    save_module.save_model(model, big)
    assert (tmp_path / "big.onnx.data").is_file() and big.stat().st_size < 20_000
    digest = (tmp_path / "big.onnx.data").read_bytes()
    out = tmp_path / "out.onnx"
    assert main(_argv(command, big, out)) == 0, capsys.readouterr().err
    assert (tmp_path / "big.onnx.data").read_bytes() == digest  # the input's data file untouched

    data_file = tmp_path / "out.onnx.data"
    assert data_file.is_file() and out.stat().st_size < plain.stat().st_size
    header = onnx.load(str(out), load_external_data=False)
    external = [t for t in header.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all({e.key: e.value for e in t.external_data}["location"] == "out.onnx.data"
                            for t in external)
    assert np.array_equal(_outputs(out), _outputs(plain))  # same weights, same formats, bit for bit
    report = {p: json.loads((tmp_path / f"{p}.json").read_text()) for p in ("plain", "out")}
    for r in report.values():
        r.pop("seconds")
        r.pop("input", None), r.pop("output", None), r.pop("model", None)
        r.pop("sessions_built", None)  # fed weights (runtime.lowering): other graph structures
    assert report["plain"] == report["out"]

    assert main(_argv(command, big, out)) == 2  # OUT (and OUT.onnx.data) need --force
    data_file.unlink()
    (tmp_path / "out.json").unlink()
    assert main(_argv(command, big, out)) == 2
