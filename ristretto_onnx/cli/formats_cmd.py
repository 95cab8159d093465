"""``ristretto-onnx formats``: what a number format can represent."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer

from ristretto_onnx.cli.app import app
from ristretto_onnx.formats import FormatInfo


@app.command("formats")
def formats_command(
    formats: list[str] = typer.Argument(
        None, help="Formats such as fixed:8:4, minifloat:8:4, pow2:-8:-1 (default: a few examples).",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per format."),
) -> None:
    """Print each format's bits, range, step and number of levels."""
    infos = [FormatInfo.of(f) for f in (formats or ["fixed:8:4", "fixed:16:8", "minifloat:8:4", "pow2:-8:-1"])]
    if as_json:
        for info in infos:
            typer.echo(json.dumps(asdict(info)))
        return
    header = f"{'format':<18} {'bits':>4} {'min':>14} {'max':>14} {'step':>12} {'smallest>0':>12} {'levels':>8}"
    typer.echo(header)
    for i in infos:
        typer.echo(
            f"{i.format:<18} {i.bits:>4} {i.min_value:>14.7g} {i.max_value:>14.7g} {i.step:>12.5g} "
            f"{i.smallest_positive:>12.5g} {i.levels:>8}"
        )
