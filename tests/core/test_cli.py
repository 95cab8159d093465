"""The CLI contract: --help everywhere, --version, one-line errors with exit codes 2 and 1."""

import json
import subprocess
import sys

import pytest

from ristretto_onnx import __version__
from ristretto_onnx.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ristretto_onnx", *args], capture_output=True, text=True)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ristretto-onnx {__version__}"


def test_formats_prints_range_step_max_bits(capsys):
    assert main(["formats", "fixed:8:4", "pow2:-8:-1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["fixed:8:4", "8", "-8", "7.9375", "0.0625", "0.0625", "256"]
    assert out[2].split()[:4] == ["pow2:-8:-1", "4", "-0.5", "0.5"]


def test_formats_json(capsys):
    assert main(["formats", "--json", "minifloat:8:4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {"format": "minifloat:8:4", "bits": 8, "min_value": -480.0, "max_value": 480.0,
                    "step": 2.0**-9, "smallest_positive": 2.0**-6, "levels": 241}


@pytest.mark.parametrize("args, code, text", [
    (["formats", "fixed:8:x"], 1, "the two parameters must be integers"),
    (["formats", "--bogus"], 2, "No such option: --bogus"),
    (["no-such-command"], 2, "No such command"),
])
def test_errors_are_one_line_without_traceback(args, code, text):
    r = run(*args)
    assert r.returncode == code
    assert r.stderr.count("\n") == 1 and text in r.stderr and r.stderr.startswith("ristretto-onnx: error:")
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback():
    r = run("--debug", "formats", "fixed:8:x")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_every_command_has_help():
    from ristretto_onnx.cli.app import app
    import typer.main

    group = typer.main.get_command(app)
    names = list(group.commands)
    assert "formats" in names
    for name in names:
        r = run(name, "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout, name
        sub = group.commands[name]
        for subname in getattr(sub, "commands", {}):
            r = run(name, subname, "--help")
            assert r.returncode == 0 and "Usage:" in r.stdout, f"{name} {subname}"
