"""``ristretto-onnx analyze``: the dynamic range analysis of thesis section 4.3."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ristretto_onnx.cli.app import app
from ristretto_onnx.cli.calib_options import (
    LabelOffsetOption, check_flags, open_calibration, preprocessing_options, resolve_input,
    split_patterns,
)
from ristretto_onnx.cli.outputs import check_outputs, usage_errors
from ristretto_onnx.errors import UsageError


@app.command("analyze")
@preprocessing_options
def analyze_command(
    model_in: str = typer.Argument(..., metavar="IN.onnx", help="FP32 model: a path or zoo:NAME."),
    calib: str = typer.Option(None, "--calib", help="Data to run: .npz, .npy, image folder or zoo:NAME "
                                                    "(default for zoo models: their calibration split)."),
    calib_size: int = typer.Option(500, help="Images to run (seeded subset; the same default in every "
                                             "command and the Python API)."),
    bits: int = typer.Option(None, help="Also show the integer/fractional split of eq. 5.2 for this width."),
    json_path: Path = typer.Option(None, "--json", help="Write the full analysis as JSON here."),
    plot: Path = typer.Option(None, "--plot", help="Write a log2 histogram plot (PNG) here, like fig. 4.1."),
    force: bool = typer.Option(False, "--force", help="Overwrite the --json and --plot files if they exist."),
    layers: list[str] = typer.Option(None, "--layers", help="Only layers matching these regexes."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Leave out layers matching these regexes."),
    no_fold_bn: bool = typer.Option(False, "--no-fold-bn", help="Analyze with BatchNormalization unfolded."),
    batch_size: int = typer.Option(256, help="Images per onnxruntime run (the same default in every command)."),
    seed: int = typer.Option(0, help="Seed of the subset."),
    label_offset: LabelOffsetOption = None,
    flags: dict = None,
) -> None:
    """Per layer and group (weights, inputs, outputs): min, max, |x| percentiles, log2 histogram
    and the integer length needed, measured on calibration data in one pass."""
    from rich.console import Console

    from ristretto_onnx.analyze import analyze_ranges, plot_histograms, render_table
    from ristretto_onnx.passes.save import atomic_path, write_text_atomic

    if bits is not None and not 2 <= bits <= 32:
        raise UsageError(f"--bits must be between 2 and 32, got {bits}")
    if calib_size < 1:
        raise UsageError("--calib-size must be positive")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    with usage_errors():
        include, leave_out = split_patterns(layers), split_patterns(exclude)
        check_flags(**flags)
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG: the path must end in .png, got {plot}")
    in_path = resolve_input(model_in)
    check_outputs([json_path, plot], [in_path, calib], force=force)
    data = open_calibration(calib, model_in, **flags, label_offset=label_offset)
    if data is None:
        raise UsageError("analyze needs data to run: give --calib")
    data = data.subset(min(calib_size, len(data)), seed)
    report = analyze_ranges(in_path, data, bits=bits, fold_bn=not no_fold_bn,
                            include=include, exclude=leave_out,
                            batch_size=batch_size, model_name=str(model_in), data_name=data.name)
    Console(width=160).print(render_table(report))
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report.to_dict(), indent=2) + "\n")
        typer.echo(f"wrote {json_path}")
    if plot is not None:
        with atomic_path(plot) as tmp:
            plot_histograms(report, tmp)
        typer.echo(f"wrote {plot}")
