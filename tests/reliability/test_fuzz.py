"""Crash safety (issue 10, Deliver 5): mutated models never crash, hang, trace back or leave files.

Seeded mutations (:mod:`tests.reliability.mutate`: bit flips, truncation, attribute/shape/dtype
edits, dropped initializers and outputs, wrong opsets and IR versions, unknown ops and domains)
of the embedded digits CNN and of LeNet go through ``quantize`` and ``compress`` in a forked child
each (:mod:`tests.reliability.forked`). Every run must end in success or a clean error: exit 0,
1 or 2 (no signal, no timeout), on failure exactly one ``ristretto-onnx: error:`` line on stderr
and no internal exception, no output or temporary file left, the input file unchanged. On success
the output is a loadable model and the report exists.

``RISTRETTO_FUZZ_CASES`` sets the number of models (default 320; each runs both commands).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from ristretto_onnx.zoo.store import package_dir
from tests.reliability.forked import run_forked, warm_up
from tests.reliability.mutate import mutate

CASES = int(os.environ.get("RISTRETTO_FUZZ_CASES", "320"))
TIMEOUT_S = 60.0  # per run; a clean case takes well under a second


def _tiny(npz: Path, out: Path, n: int = 32) -> Path:
    with np.load(npz) as d:
        np.savez(out, images=d["images"][:n], labels=d["labels"][:n])
    return out


def _bases(tmp: Path) -> list[tuple[str, bytes, Path]]:
    pkg = package_dir()
    bases = [("digits-cnn", (pkg / "digits-cnn.onnx").read_bytes(), _tiny(pkg / "digits-test.npz", tmp / "digits.npz"))]
    zoo = os.environ.get("RISTRETTO_ZOO", "")
    for root in [Path(p) for p in zoo.split(os.pathsep) if p] + [Path(__file__).parents[3] / "shared" / "zoo"]:
        lenet, mnist = root / "models" / "lenet-mnist.onnx", root / "datasets" / "mnist" / "test.npz"
        if lenet.is_file() and mnist.is_file():
            bases.append(("lenet-mnist", lenet.read_bytes(), _tiny(mnist, tmp / "mnist.npz")))
            break
    return bases


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _commands(model: Path, data: Path, out: Path) -> dict[str, list[str]]:
    return {
        "quantize": ["quantize", str(model), str(out), "--scheme", "dfp", "--bits", "8", "--calib", str(data),
                     "--calib-size", "32"],
        "compress": ["compress", str(model), str(out), "--data", str(data), "--calib-size", "32", "--quiet",
                     "--max-bits", "8", "--min-bits", "6"],
    }


def _check(outcome, folder: Path, before: set[str], out: Path, model: Path, digest: str) -> str | None:
    """``None`` when the run ended cleanly, else what went wrong."""
    if outcome.timed_out:
        return f"hang (> {TIMEOUT_S:.0f} s)"
    if outcome.signal is not None:
        return f"crash: signal {outcome.signal}"
    if outcome.code not in (0, 1, 2):
        return f"exit {outcome.code}: {outcome.stderr[-400:]}"
    if _sha(model) != digest:
        return "the input model changed"
    new = {p.name for p in folder.iterdir()} - before
    if any(".tmp" in name for name in new):
        return f"temporary files left: {sorted(new)}"
    if outcome.code == 0:
        if new - {out.name, out.with_suffix(".json").name, out.name + ".data"}:
            return f"unexpected files: {sorted(new)}"
        try:
            onnx.load(str(out))
        except Exception as e:  # noqa: BLE001
            return f"the written model does not load: {e}"
        return None
    lines = outcome.stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("ristretto-onnx: error: "):
        return f"stderr is not one error line: {outcome.stderr[-600:]!r}"
    if "Traceback" in outcome.stderr or "rerun with --debug" in outcome.stderr:
        return f"an internal error, not a clean one: {lines[0]}"
    if new:
        return f"partial output after a failure: {sorted(new)}"
    return None


@pytest.mark.slow
def test_mutated_models_end_cleanly(tmp_path):
    bases = _bases(tmp_path)
    warm_up(tmp_path)
    failures: list[str] = []
    rejected: list[str] = []
    tally: Counter = Counter()
    for seed in range(CASES):
        name, data, calib = bases[seed % 8 == 7 and len(bases) > 1]  # every 8th case: LeNet
        kind, mutated = mutate(data, seed)
        folder = tmp_path / f"case{seed}"
        folder.mkdir()
        model = folder / "in.onnx"
        model.write_bytes(mutated)
        digest = _sha(model)
        for command, argv in _commands(model, calib, folder / "out.onnx").items():
            for stale in folder.glob("out.*"):
                stale.unlink()
            before = {p.name for p in folder.iterdir()}
            outcome = run_forked(argv, folder, TIMEOUT_S)
            problem = _check(outcome, folder, before, folder / "out.onnx", model, digest)
            tally[(command, "ok" if outcome.code == 0 else f"exit {outcome.code}")] += 1
            if "onnxruntime cannot run" in outcome.stderr:  # passed validation, refused by onnxruntime
                rejected.append(f"seed {seed} {kind} {command}: {outcome.stderr.strip()[23:140]}")
            if problem:
                failures.append(f"seed {seed} ({name}, {kind}) {command}: {problem}")
    runs = sum(tally.values())
    print(f"\nfuzz: {CASES} mutated models, {runs} runs: " + ", ".join(f"{c} {r}: {n}" for (c, r), n in sorted(tally.items()))
          + f"; {len(rejected)} refused by onnxruntime after passing validation")
    print("\n".join(rejected))
    assert CASES >= 300 or "RISTRETTO_FUZZ_CASES" in os.environ
    assert not failures, f"{len(failures)} of {runs} runs did not end cleanly:\n" + "\n".join(failures[:40])
