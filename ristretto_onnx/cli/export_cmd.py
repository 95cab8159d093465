"""``ristretto-onnx export``: write a simulated model for a deployment runtime or for hardware."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ristretto_onnx.cli.app import app
from ristretto_onnx.errors import RistrettoError


@app.command("export")
def export_command(
    sim: Path = typer.Argument(..., metavar="SIM.onnx", help="Simulated model (from quantize or compress)."),
    out: Path = typer.Argument(..., metavar="OUT", help="OUT.onnx (qdq, qonnx, integer) or a folder (c)."),
    to: str = typer.Option(..., "--to", help="qdq, qonnx, integer or c."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Write SIM as standard Q/DQ (qdq), QONNX (qonnx), a bit-true integer model (integer) or a
    C99 golden model folder (c). SIM is never modified; OUT appears only when complete."""
    from ristretto_onnx.export import get_exporter
    from ristretto_onnx.passes.load import load_model
    from ristretto_onnx.passes.save import save_model

    start = time.perf_counter()
    exporter = get_exporter(to)
    if not sim.is_file():
        raise RistrettoError(f"model file not found: {sim}")
    if out.exists() and out.resolve() == sim.resolve():
        raise RistrettoError("OUT is the input model: refusing to overwrite the input")
    if out.exists() and not force:
        raise typer.BadParameter(f"{out} exists; pass --force to overwrite it", param_hint="OUT")
    folder = out if exporter.writes == "folder" else out.parent
    if exporter.writes == "model":
        if out.suffix != ".onnx":
            raise RistrettoError(f"the output path must end in .onnx: {out}")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise RistrettoError(f"output folder {out.parent} does not exist")
    elif out.exists() and not out.is_dir():
        raise RistrettoError(f"--to {exporter.name} writes a folder and {out} is a file")
    function = exporter.load()
    model = load_model(sim, check=False)
    if exporter.writes == "model":
        save_model(function(model), out)
    else:
        function(model, folder)
    typer.echo(f"wrote {out} (--to {exporter.name}: {exporter.summary}) in {time.perf_counter() - start:.1f}s")
