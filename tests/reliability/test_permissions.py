"""Outputs get the permissions an ordinary open() would give them (issue 10, Deliver 1).

A temporary file is created 0600; renamed as it was, a model written in Docker ended up
root-only on a bind mount. Every writer (model, external data, JSON report, plots) now applies
0666 less the umask.
"""

from __future__ import annotations

import os
import stat

import onnx
import pytest

from ristretto_onnx.cli import main
from ristretto_onnx.passes import save as save_module
from ristretto_onnx.zoo.store import package_dir


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_writers_respect_the_umask(tmp_path, umask, monkeypatch, mask, mode):
    umask(mask)
    model = onnx.load(str(package_dir() / "digits-cnn.onnx"))
    save_module.save_model(model, tmp_path / "m.onnx")
    save_module.write_text_atomic(tmp_path / "r.json", "{}")
    with save_module.atomic_path(tmp_path / "p.png") as tmp:
        tmp.write_bytes(b"png")
    monkeypatch.setattr(save_module, "PROTO_LIMIT", 20_000)
    save_module.save_model(model, tmp_path / "big.onnx")
    names = ["m.onnx", "r.json", "p.png", "big.onnx", "big.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary file left
    assert {n: _mode(tmp_path / n) for n in names} == {n: mode for n in names}


def test_compress_output_is_0644_under_umask_022(tmp_path, umask):
    out = tmp_path / "d.onnx"
    assert main(["compress", "zoo:digits-cnn", str(out), "-q"]) == 0
    assert _mode(out) == _mode(out.with_suffix(".json")) == 0o644
