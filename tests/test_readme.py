"""Every command block of the README runs, as onnx-graphsurgeon's tests run its examples.

The blocks are read from README.md when the tests are collected, so a new block is tested
without touching this file. Each block runs top to bottom in a fresh folder, as a reader would
type it. Illustrative file names are real small files there: ``in.onnx`` is the embedded digits
CNN, ``val.npz``/``train.npz`` its test and calibration images, preprocessed; ``out.onnx`` exists
(a simulated digits model) only in blocks that read it first. Blocks on zoo models other than
the embedded one need the shared zoo and are marked slow; the few commands that cannot run here
are listed in :data:`SKIPPED` with the reason (and the others of their block still run).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from ristretto_onnx.cli import main
from tests.conftest import REPO

README = REPO / "README.md"

#: Commands (by a regex on the command line) that are not run, and why.
SKIPPED = {
    r"^pip install": "installs the package; these tests run in the installed package",
    r"^python -m pytest": "runs this test suite (it would run itself)",
    r"compress zoo:resnet20-cifar10": "a full search on 10,000 CIFAR-10 images, about 10 minutes on 2 "
                                      "cores; tests/core/test_compress.py covers compress on zoo models",
}

#: Zoo names that ship inside the package (no shared zoo needed, fast).
EMBEDDED = ("zoo:digits-cnn", "zoo:digits-test", "zoo:digits-calib")


def _blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, line of the first code line, code)`` of every fenced block."""
    out, lang, start, lines = [], None, 0, []
    for i, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1) or "text", i + 1, []
        elif line.startswith("```") and lang is not None:
            out.append((lang, start, "\n".join(lines)))
            lang = None
        elif lang is not None:
            lines.append(line)
    return out


def _commands(code: str) -> list[str]:
    """The shell commands of one block, comments removed, ``&&`` chains split."""
    cmds = []
    for line in code.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        cmds += [p.strip() for p in line.split("&&") if p.strip()]
    return cmds


def _shell_blocks() -> list[tuple[int, list[str]]]:
    return [(start, _commands(code)) for lang, start, code in _blocks(README.read_text())
            if lang in ("bash", "sh", "shell", "console")]


def _python_blocks() -> list[tuple[int, str]]:
    return [(start, code) for lang, start, code in _blocks(README.read_text()) if lang == "python"]


def _is_slow(command: str) -> bool:
    names = re.findall(r"zoo:[\w.-]+", command)
    named = re.search(r"^ristretto-onnx zoo (info|eval) (\S+)", command)
    return any(n not in EMBEDDED for n in names) or bool(named and f"zoo:{named.group(2)}" not in EMBEDDED)


def _skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIPPED.items() if re.search(pattern, command)), None)


def _block_params():
    params = []
    for line, commands in _shell_blocks():
        run = [c for c in commands if not _skip_reason(c)]
        marks = []
        if not run:
            marks.append(pytest.mark.skip(reason="; ".join(dict.fromkeys(map(_skip_reason, commands)))))
        elif any(_is_slow(c) for c in run):
            marks.append(pytest.mark.slow)
        params.append(pytest.param(commands, id=f"README:{line}", marks=marks))
    return params


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory) -> Path:
    """The small real files the README's illustrative names stand for (made once)."""
    from ristretto_onnx.data import load_dataset
    from ristretto_onnx.passes.save import save_model
    from ristretto_onnx.quantize import QuantizeOptions, quantize

    folder = tmp_path_factory.mktemp("readme-files")
    zoo_dir = REPO / "zoo"
    (folder / "in.onnx").write_bytes((zoo_dir / "digits-cnn.onnx").read_bytes())
    for name, src in (("val.npz", "digits-test.npz"), ("train.npz", "digits-calib.npz")):
        raw = np.load(zoo_dir / src)
        x = (raw["images"].astype(np.float32) / 255.0)[:, None]  # the zoo's preprocessing
        np.savez(folder / name, images=x, labels=raw["labels"])
    simulated = quantize(folder / "in.onnx", QuantizeOptions(scheme="dfp", bits=8),
                         load_dataset(str(folder / "train.npz")))
    save_model(simulated.model, folder / "simulated.onnx")
    return folder


def _workdir(tmp_path: Path, placeholders: Path, reads_out: bool) -> Path:
    for name in ("in.onnx", "val.npz", "train.npz"):
        (tmp_path / name).write_bytes((placeholders / name).read_bytes())
    if reads_out:
        (tmp_path / "out.onnx").write_bytes((placeholders / "simulated.onnx").read_bytes())
    return tmp_path


def _reads_out_first(commands: list[str]) -> bool:
    """Whether the block reads ``out.onnx`` (``eval out.onnx``) before any command writes it."""
    for c in commands:
        args = shlex.split(c)
        if "out.onnx" in args:
            return len(args) > 1 and args[1] == "eval"
    return False


@pytest.mark.parametrize("commands", _block_params())
def test_readme_block_runs_top_to_bottom(commands: list[str], tmp_path, placeholders, monkeypatch, request):
    """One fresh folder per block; its commands run in order, as a reader would type them."""
    if any(_is_slow(c) for c in commands if not _skip_reason(c)):
        request.getfixturevalue("zoo_env")
    monkeypatch.chdir(_workdir(tmp_path, placeholders, _reads_out_first(commands)))
    for command in commands:
        if _skip_reason(command):
            continue
        args = shlex.split(command)
        if args[:2] == ["mkdir", "-p"]:
            for folder in args[2:]:
                Path(folder).mkdir(parents=True, exist_ok=True)
            continue
        assert args[0] == "ristretto-onnx", f"README command not run by this test: {command!r} (map or skip it)"
        assert main(args[1:]) == 0, command
        outputs = [a for a in args[2:] if a.endswith((".onnx", ".json", ".png")) and not a.startswith("zoo:")]
        for path in outputs:
            assert Path(path).is_file(), f"{command}: {path} was not written"


def test_every_skipped_command_is_still_in_the_readme():
    """The skip list names real commands (a README edit must not leave a stale excuse)."""
    commands = [c for _, block in _shell_blocks() for c in block]
    for pattern in SKIPPED:
        assert any(re.search(pattern, c) for c in commands), pattern


def _quantize_sim_model():
    """A model with one QuantizeSim node and no function bodies (what the README block starts from)."""
    from onnx import TensorProto, helper

    from ristretto_onnx.ops import make_quantize_node

    node = make_quantize_node("x", "y", "minifloat:8:4")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("code", [pytest.param(code, id=f"README:{line}") for line, code in _python_blocks()])
def test_readme_python_block(code: str, tmp_path, placeholders, monkeypatch):
    monkeypatch.chdir(_workdir(tmp_path, placeholders, reads_out=False))
    namespace = {"model_with_quantize_sim_nodes": _quantize_sim_model(), "print": lambda *a, **k: None}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    if "result" in namespace:  # the compress example: a model and its report were written
        assert Path("out.onnx").is_file() and Path("out.json").is_file()
        assert namespace["result"].report.drop <= 0.01 + 1e-9
    if "model" in namespace:  # the ops example: the bodies are attached, stock onnxruntime runs it
        from ristretto_onnx.runtime.session import create_session

        from ristretto_onnx.formats import parse_format

        x = np.array([0.1, 1.0, 300.0, 1000.0], np.float32)
        y = create_session(namespace["model"]).run(None, {"x": x})[0]
        assert y.tolist() == parse_format("minifloat:8:4").quantize(x).tolist()  # the numpy reference


def test_every_readme_block_is_collected():
    """The parser sees the README's blocks (a broken fence would silently drop them)."""
    commands = [c for _, block in _shell_blocks() for c in block]
    assert any(c.startswith("ristretto-onnx compress zoo:digits-cnn") for c in commands)
    assert len(_python_blocks()) >= 2 and len(commands) >= 12
