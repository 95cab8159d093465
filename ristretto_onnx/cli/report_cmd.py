"""``ristretto-onnx report``: the hardware view of a simulated model (formats, MACs, memory)."""

from __future__ import annotations

from pathlib import Path

import typer

from ristretto_onnx.cli.app import app
from ristretto_onnx.cli.outputs import check_outputs
from ristretto_onnx.errors import RistrettoError


@app.command("report")
def report_command(
    sim: Path = typer.Argument(..., metavar="SIM.onnx", help="Simulated model (from quantize or compress)."),
    sram_kib: float = typer.Option(None, "--sram-kib", min=0, help="On-chip SRAM in KiB: do the weights and "
                                                                   "the largest activation buffer fit?"),
    json_path: Path = typer.Option(None, "--json", help="Write the report as JSON here."),
    plot: Path = typer.Option(None, "--plot", help="Write a PNG chart here (MACs and memory per layer)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing --json/--plot files."),
) -> None:
    """Per layer and in total: formats, bits, fractional lengths / exponent windows; MACs by
    operand widths; multiplier area and accumulator width; memory vs FP32; SRAM fit; accuracy."""
    from ristretto_onnx.export.hw_report import hardware_report
    from ristretto_onnx.export.hw_report_render import to_markdown, write_json, write_plot
    from ristretto_onnx.passes.load import load_model

    if not sim.is_file():
        raise RistrettoError(f"model file not found: {sim}")
    check_outputs([json_path, plot], [sim], force=force)
    model = load_model(sim, check=False)
    report = hardware_report(model, sram_kib=sram_kib, name=sim.stem)
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown(to_markdown(report)))
    if json_path is not None:
        write_json(report, json_path)
        typer.echo(f"wrote {json_path}")
    if plot is not None:
        write_plot(report, plot)
        typer.echo(f"wrote {plot}")
