"""``ristretto-onnx finetune``: win back accuracy with shadow weights (thesis 9.3, fig. 9.2)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ristretto_onnx.cli.app import app
from ristretto_onnx.cli.calib_options import LabelOffsetOption, preprocessing_options, with_label_offset
from ristretto_onnx.errors import RistrettoError


@app.command("finetune")
@preprocessing_options
def finetune_command(
    model_path: Path = typer.Argument(..., metavar="SIM.onnx",
                                      help="Simulated model written by compress or quantize. Never modified."),
    out: Path = typer.Argument(..., metavar="OUT.onnx", help="Fine-tuned model (must not exist unless --force)."),
    train_data: str = typer.Option(..., "--train-data", help="Labelled training data (.npz, image folder, "
                                                             "zoo:NAME, e.g. zoo:mnist-train)."),
    data: str = typer.Option(..., "--data", help="Validation data scored after every epoch (the best epoch "
                                                 "wins), e.g. zoo:mnist-test."),
    epochs: int = typer.Option(5, help="Passes over the training data."),
    lr: float = typer.Option(1e-4, help="Learning rate (thesis: an order of magnitude below the last "
                                        "rate of the original training)."),
    batch_size: int = typer.Option(64, help="Training images per step."),
    optimizer: str = typer.Option("adam", help="adam (the thesis's rule) or sgd (with momentum 0.9)."),
    schedule: str = typer.Option("cosine", help="Learning rate over the epochs: cosine or constant."),
    seed: int = typer.Option(0, help="Seed of the batch order and the stochastic rounding."),
    device: str = typer.Option("auto", help="auto (CUDA when torch sees a GPU), cpu or cuda."),
    quantize_activations: bool = typer.Option(False, "--quantize-activations",
                                              help="Train through the activation quantizers too "
                                                   "(straight through); the thesis keeps them float."),
    weight_rounding: str = typer.Option("stochastic", help="Rounding of the weights in training: "
                                                           "stochastic (thesis) or nearest_even."),
    train_size: int = typer.Option(None, help="Train on a seeded subset of this many images."),
    tolerance: float = typer.Option(None, help="Largest allowed drop from FP32 to re-check (default: the "
                                               "compress run's, else 0.01)."),
    metric: str = typer.Option("top1", help="top1, top5 or fidelity (agreement with the FP32 model)."),
    report: Path = typer.Option(None, "--report", help="JSON report path (default: OUT with .json)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT (and its report) if they exist."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result."),
    label_offset: LabelOffsetOption = None,
    flags: dict = None,
) -> None:
    """Fine-tune a simulated model: shadow weights, stochastic rounding, best epoch by exact score.

    Every batch uses the weights quantized with seeded stochastic rounding; gradients update
    full-precision shadow weights; after every epoch the exact simulated model is scored in
    onnxruntime on --data. OUT is the same graph with the best epoch's weights; OUT.json has
    every epoch. Ctrl-C stops and writes the best epoch so far. Needs torch
    (pip install 'ristretto-onnx[finetune]').
    """
    from ristretto_onnx.cli.outputs import check_outputs, onnx_output, usage_errors
    from ristretto_onnx.data import load_dataset, preprocess_from_cli
    from ristretto_onnx.finetune.torch_dep import require_torch

    out = onnx_output(out)
    report_path = report if report is not None else out.with_suffix(".json")
    if not model_path.is_file():
        raise RistrettoError(f"model file not found: {model_path}")
    require_torch()
    with usage_errors():
        from ristretto_onnx.finetune.trainer import FinetuneOptions, finetune

        options = FinetuneOptions(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                                  schedule=schedule, seed=seed, device=device,
                                  quantize_activations=quantize_activations, train_size=train_size,
                                  weight_rounding=weight_rounding,
                                  tolerance=tolerance, metric=metric)
        pre = preprocess_from_cli(**flags) if any(v is not None for v in flags.values()) else None
    check_outputs([out, report_path], [model_path, train_data, data], force=force)
    train_set, val_set = load_dataset(train_data, pre), load_dataset(data, pre)
    if label_offset is not None:
        train_set, val_set = with_label_offset(train_set, label_offset), with_label_offset(val_set, label_offset)
    log = None if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = finetune(str(model_path), train_set, val_set, options=options, log=log,
                      progress=False if quiet else None)
    model_file, report_file = result.save(out, report_path)  # under torchrun: rank 0 only
    if result.rank != 0:
        return
    typer.echo(result.headline)
    typer.echo(f"best epoch {result.best_epoch} of {len(result.epochs) - 1} on {result.device}, "
               f"{result.seconds:.1f} s; wrote {model_file} and {report_file}")
    if result.interrupted:
        typer.echo("interrupted: wrote the best epoch so far", err=True)
        raise typer.Exit(130)
