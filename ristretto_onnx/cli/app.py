"""The typer application every command module registers itself on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="ristretto-onnx",
    help="Hardware-oriented approximation of CNNs in ONNX (fixed point, dynamic fixed point, "
    "minifloat, power-of-two weights).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

#: Set by the ``--debug`` global option: re-raise errors with their traceback.
state = {"debug": False, "quiet": False}
