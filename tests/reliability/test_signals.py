"""Ctrl-C and SIGTERM mid-run (issue 10, Deliver 6): exit 130/143, one line, no partial file."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ristretto_onnx.zoo.store import package_dir


@pytest.fixture(scope="module")
def big_digits(tmp_path_factory) -> Path:
    """The digits test set tiled to 40,000 images: a compress that runs for several seconds."""
    folder = tmp_path_factory.mktemp("signals")
    with np.load(package_dir() / "digits-test.npz") as d:
        images, labels = np.tile(d["images"], (80, 1, 1)), np.tile(d["labels"], 80)
    np.savez(folder / "big.npz", images=images, labels=labels)
    return folder / "big.npz"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_mid_search_exits_cleanly(tmp_path, big_digits, signum, code):
    out = tmp_path / "out.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "ristretto_onnx", "compress", "zoo:digits-cnn", str(out),
                             "--data", str(big_digits), "--no-early-reject"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines = []
    for line in proc.stderr:  # plain progress lines (stderr is a pipe); wait for the search
        lines.append(line)
        if " plans, " in line:
            break
    proc.send_signal(signum)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == code, "".join(lines) + rest
    last = rest.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"ristretto-onnx: error: interrupted by {name} during compress (search dfp, ")
    assert "plans scored" in last and last.endswith("no output was written")
    assert "Traceback" not in rest
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary file
