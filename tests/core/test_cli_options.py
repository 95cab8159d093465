"""The preprocessing flags are declared once (cli.calib_options.preprocessing_options) and reach
every data-reading command as one dict."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from ristretto_onnx.cli import app
from ristretto_onnx.cli.calib_options import PREPROCESS_FLAGS, preprocessing_options

FLAGS = [f"--{name}" for name in PREPROCESS_FLAGS]


@pytest.mark.parametrize("command", ["analyze", "compress", "eval", "finetune", "quantize"])
def test_every_data_command_lists_each_preprocessing_flag_once(command):
    import ristretto_onnx.cli as cli

    for module in cli.COMMAND_MODULES:  # registration is a side effect of the import
        __import__(f"ristretto_onnx.cli.{module}")
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    options = [w for line in result.output.splitlines() for w in line.split() if w.startswith("--")]
    assert [options.count(f) for f in FLAGS] == [1] * len(FLAGS)
    assert "--flags" not in options


def test_the_flags_reach_the_command_as_one_dict_next_to_its_own_options():
    seen = {}
    local = typer.Typer()

    @local.command()
    @preprocessing_options
    def command(count: int = typer.Option(1, "--count"), flags: dict = None) -> None:
        seen.update(flags, count=count)

    @local.command()
    def other() -> None:  # two commands, so typer keeps the command name
        pass

    result = CliRunner().invoke(local, ["command", "--scale", "1/255", "--crop", "24", "--count", "3"])
    assert result.exit_code == 0, result.output
    assert seen == {"scale": "1/255", "mean": None, "std": None, "resize": None, "crop": "24", "count": 3}
