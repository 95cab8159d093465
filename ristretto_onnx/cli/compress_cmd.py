"""``ristretto-onnx compress``: the main job — smallest formats within a tolerance."""

from __future__ import annotations

from pathlib import Path

import typer

from ristretto_onnx.cli.app import app
from ristretto_onnx.cli.backend_options import BackendOption, RayAddressOption, WorkersOption, backend_from_flags
from ristretto_onnx.cli.calib_options import (
    CalibSizeOption, LabelOffsetOption, check_flags, open_split, preprocessing_options,
    split_patterns,
)
from ristretto_onnx.cli.outputs import check_outputs, onnx_output, usage_errors
from ristretto_onnx.cli.progress import Reporter
from ristretto_onnx.compress import CompressOptions, compress
from ristretto_onnx.errors import UsageError
from ristretto_onnx.events import ProgressEvent, emit
from ristretto_onnx.schemes import DEFAULT_RANGE_RULE


@app.command("compress")
@preprocessing_options
def compress_command(
    model_spec: str = typer.Argument(..., metavar="IN.onnx",
                                     help="Input model: a path or zoo:NAME (zoo:digits-cnn is the "
                                          "embedded default). Never modified."),
    out: str = typer.Argument(..., metavar="OUT.onnx", help="Output model path (must not exist unless --force)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT (and its report) if they exist."),
    scheme: str = typer.Option("dfp", help="fixed, dfp, minifloat, pow2, or auto (all; keep the smallest)."),
    tolerance: float = typer.Option(0.01, help="Largest allowed metric drop (0.01 = 1 point of top-1)."),
    tolerance_mode: str = typer.Option("absolute", help="absolute, or relative (divided by the baseline)."),
    data: str = typer.Option(None, "--data", help="Validation data scored by the search (.npz, image folder, "
                                                   "zoo:NAME). Default for zoo models: their test set."),
    calib: str = typer.Option(None, "--calib", help="Calibration data (default: a seeded subset of --data, "
                                                     "or the zoo model's calibration split)."),
    calib_size: CalibSizeOption = CompressOptions.calib_size,
    test: str = typer.Option(None, "--test", help="Held-out data scored once on the final model."),
    metric: str = typer.Option("top1", help="top1, top5, fidelity (agreement with FP32), or module:function."),
    granularity: str = typer.Option("group", help="group (thesis: conv weights, fc weights, activations) "
                                                  "or layer (a width per layer's weights)."),
    weight_granularity: str = typer.Option(None, help="tensor (thesis), channel (one scale per output "
                                                       "channel; dfp and pow2) or auto (per channel for the "
                                                       "layers where it lowers the output error; the default "
                                                       "for dfp and pow2, tensor for the others)."),
    range_rule: str = typer.Option(DEFAULT_RANGE_RULE, help="dfp fractional lengths: mse (least squared error on the "
                                               "calibration histogram), max (thesis eq. 5.2, no saturation) "
                                               "or percentile:P (e.g. percentile:99.99)."),
    min_bits: int = typer.Option(None, help="Smallest width the search may choose."),
    max_bits: int = typer.Option(None, help="Largest width the search may choose (default 16; pow2: 6)."),
    exp_min: int = typer.Option(None, help="pow2: fixed smallest exponent (with --exp-max)."),
    exp_max: int = typer.Option(None, help="pow2: fixed largest exponent (with --exp-min)."),
    report: Path = typer.Option(None, "--report", help="JSON report path (default: OUT with .json)."),
    batch_size: int = typer.Option(256, help="Images per onnxruntime run."),
    layers: list[str] = typer.Option(None, "--layers", help="Only layers whose name matches (regex; repeatable)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Skip layers whose name matches (regex; repeatable)."),
    no_fold_bn: bool = typer.Option(False, "--no-fold-bn", help="Keep BatchNormalization separate."),
    no_early_reject: bool = typer.Option(False, "--no-early-reject",
                                         help="Score every candidate on the full data."),
    seed: int = typer.Option(0, help="Seed of the calibration subset."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display or lines while working "
                                                            "(pipelines); the final table still prints."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report to stdout instead of the table."),
    finetune: bool = typer.Option(False, "--finetune", help="Then fine-tune the plan and narrow it while it "
                                                            "holds (needs torch and --train-data)."),
    train_data: str = typer.Option(None, "--train-data", help="--finetune: labelled training data (default "
                                                              "for zoo models: their training split)."),
    epochs: int = typer.Option(3, "--epochs", help="--finetune: epochs per fine-tuned plan."),
    lr: float = typer.Option(1e-4, "--lr", help="--finetune: learning rate (Adam)."),
    backend: BackendOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = 2,
    label_offset: LabelOffsetOption = None,
    flags: dict = None,
) -> None:
    """Find the smallest number formats that keep accuracy within a tolerance; write the model.

    Writes OUT.onnx (runs in plain onnxruntime; every tensor's format in its QuantizeSim node,
    a summary in metadata_props) and OUT.json (baseline and final metric, formats, bits, weight
    memory, evaluations, time per stage).
    """
    from ristretto_onnx import zoo
    from ristretto_onnx.range_rules import check_rule
    from ristretto_onnx.runtime.metrics import accumulator, load_metric

    out_path = onnx_output(out)
    report_path = report if report is not None else out_path.with_suffix(".json")
    metric_fn = None
    with usage_errors():
        if ":" in metric:
            metric_fn = load_metric(metric)
        else:
            accumulator(metric)
        options = CompressOptions(
            scheme=scheme, tolerance=tolerance, tolerance_mode=tolerance_mode,
            metric=metric if metric_fn is None else "custom", calib_size=calib_size, granularity=granularity,
            weight_granularity=weight_granularity, range_rule=range_rule, min_bits=min_bits,
            max_bits=max_bits, exp_min=exp_min, exp_max=exp_max, batch_size=batch_size, seed=seed,
            fold_bn=not no_fold_bn, layers=split_patterns(layers), exclude=split_patterns(exclude),
            early_reject=not no_early_reject,
        )
        if backend == "ray" and finetune:
            raise UsageError("--finetune runs locally; use --backend local with --finetune")
        check_flags(**flags)
        check_rule(range_rule)
        if weight_granularity is not None and weight_granularity not in ("tensor", "channel", "auto"):
            raise UsageError(f"--weight-granularity must be tensor, channel or auto, not {weight_granularity!r}")
        for name, value in (("--batch-size", batch_size), ("--min-bits", min_bits), ("--max-bits", max_bits)):
            if value is not None and value < (1 if name == "--batch-size" else 2):
                raise UsageError(f"{name} is too small: {value}")
    where = backend_from_flags(backend, ray_address, workers)
    model_path = zoo.resolve_model(model_spec)
    check_outputs([out_path, report_path], [model_path, data, calib, test], force=force)
    flags_and_labels = dict(flags, label_offset=label_offset)
    dataset = open_split(data, model_spec, "test", **flags_and_labels)
    if dataset is None:
        raise UsageError("give --data (validation images with labels, or use --metric fidelity)")
    calib_set = open_split(calib, model_spec, "calib", **flags_and_labels)  # compress takes a seeded subset
    test_set = open_split(test, model_spec, "test", **flags_and_labels) if test else None

    with Reporter(quiet=quiet) as log:
        if finetune:  # issue 12: fine-tune the chosen plan, then narrow it (ristretto_onnx.finetune)
            from ristretto_onnx.finetune.compress_driver import run_from_cli

            result = run_from_cli(str(model_path), dataset, open_split(train_data, model_spec, "train", **flags_and_labels),
                                  epochs, lr, calib=calib_set, test=test_set, log=log, options=options)
        else:
            result = compress(str(model_path), dataset, calib=calib_set, test=test_set, log=log,
                              metric_fn=metric_fn, options=options, backend=where)
        emit(log, ProgressEvent("write", f"writing {out_path} and {report_path}"))
        model_file, report_file = result.save(out_path, report_path)
    if as_json:
        typer.echo(result.report.to_json())
        return
    for line in result.report.summary_lines():
        typer.echo(line)
    typer.echo(f"wrote {model_file} and {report_file}")
