"""``ristretto-onnx export``: write a simulated model for a deployment runtime or for hardware."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ristretto_onnx.cli.app import app
from ristretto_onnx.cli.outputs import check_outputs, onnx_output
from ristretto_onnx.errors import RistrettoError, UsageError


@app.command("export")
def export_command(
    sim: Path = typer.Argument(..., metavar="SIM.onnx", help="Simulated model (from quantize or compress)."),
    out: Path = typer.Argument(..., metavar="OUT", help="OUT.onnx (qdq, qonnx, integer) or a folder (c); "
                                                        "must not exist unless --force."),
    to: str = typer.Option(..., "--to", help="qdq, qonnx, integer or c."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Write SIM as standard Q/DQ (qdq), QONNX (qonnx), a bit-true integer model (integer) or a
    C99 golden model folder (c). SIM is never modified; OUT appears only when complete."""
    from ristretto_onnx.export import get_exporter
    from ristretto_onnx.passes.load import load_model
    from ristretto_onnx.passes.save import save_model

    start = time.perf_counter()
    try:
        exporter = get_exporter(to)
    except RistrettoError as e:
        raise UsageError(str(e)) from None
    if not sim.is_file():
        raise RistrettoError(f"model file not found: {sim}")
    if exporter.writes == "model":
        check_outputs([onnx_output(out)], [sim], force=force)
    else:
        _check_folder(out, sim, force)
    function = exporter.load()
    model = load_model(sim, check=False)
    if exporter.writes == "model":
        save_model(function(model), out)
    else:
        function(model, out)
    typer.echo(f"wrote {out} (--to {exporter.name}: {exporter.summary}) in {time.perf_counter() - start:.1f}s")


def _check_folder(out: Path, sim: Path, force: bool) -> None:
    """OUTDIR for a folder export: not a file, not the input's folder, new unless --force."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; --to c writes a folder")
    if out.exists() and out.resolve() == sim.resolve().parent:
        raise UsageError(f"{out} holds the input model: give a folder of its own")
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise RistrettoError(f"output folder {parent} does not exist (create it first)")
