"""``ristretto-onnx eval``: score a model (FP32 or simulated) on a dataset."""

from __future__ import annotations

import json
import sys

import typer

from ristretto_onnx.cli.app import app, state
from ristretto_onnx.cli.backend_options import BackendOption, RayAddressOption, WorkersOption, backend_from_flags
from ristretto_onnx.cli.calib_options import LabelOffsetOption, check_flags, preprocessing_options
from ristretto_onnx.cli.outputs import usage_errors
from ristretto_onnx.data import preprocess_from_cli
from ristretto_onnx.errors import UsageError


def _zoo_name(model: str) -> str | None:
    return model[4:] if model.startswith("zoo:") else None


@app.command("eval")
@preprocessing_options
def eval_command(
    model: str = typer.Argument(..., metavar="MODEL", help="An .onnx file (FP32 or simulated) or zoo:NAME."),
    data: str = typer.Option(None, "--data", help="Images (.npz, .npy, image folder or zoo:NAME). "
                                                   "Default for zoo models: their test set."),
    metric: list[str] = typer.Option(None, "--metric", help="top1, top5, fidelity (agreement with the FP32 "
                                                            "model's top-1) or module:function; repeatable. "
                                                            "Default: top1 (fidelity for unlabelled data)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per onnxruntime run."),
    reference: str = typer.Option(None, "--reference", help="The FP32 model fidelity compares with (.onnx or "
                                                            "zoo:NAME)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object keyed by metric name."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    backend: BackendOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = 2,
    label_offset: LabelOffsetOption = None,
    flags: dict = None,
) -> None:
    """Print the metric(s) and images/s of MODEL on --data."""
    from ristretto_onnx import zoo
    from ristretto_onnx.data.metadata import dataset_for, recorded
    from ristretto_onnx.runtime.evaluate import evaluate
    from ristretto_onnx.runtime.metrics import accumulator

    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    with usage_errors():
        for m in metric or ():
            accumulator(m)
        check_flags(**flags)
    where = backend_from_flags(backend, ray_address, workers)
    model_path = zoo.resolve_model(model)
    zoo_name = _zoo_name(model)
    # Base preprocessing: the zoo entry's, else what the model recorded; flags modify it.
    base = zoo.get_model(zoo_name).preprocess if zoo_name else None
    rec = None if zoo_name else recorded(model_path)
    if rec is not None:
        base = rec[0]
    given = any(v is not None for v in flags.values())
    pre = preprocess_from_cli(**flags, base=base) \
        if given else base
    if data is None:
        if zoo_name is None:
            raise UsageError("give --data (images to evaluate on); only zoo:NAME models have a default")
        dataset = zoo.model_dataset(zoo_name, "test", pre if given else None)
    else:
        dataset = data
    dataset, _ = dataset_for(model_path, dataset, pre, label_offset=label_offset)
    if rec is not None and not as_json:
        how = "with your flags on top" if given else "flags override it"
        offset = f" and label offset {rec[1]}" if rec[1] and label_offset is None else ""
        print(f"note: using the preprocessing recorded in {model} ({base}){offset}; {how}", file=sys.stderr)
    metrics = list(dict.fromkeys(metric or (["top1"] if dataset.labels is not None else ["fidelity"])))
    ref = str(zoo.resolve_model(reference)) if reference else None
    show = False if (quiet or as_json or state.get("quiet")) else None
    result = evaluate(str(model_path), dataset, metrics, batch_size=batch_size, reference=ref, progress=show,
                      backend=where)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    for name, value in result.metrics.items():
        typer.echo(f"{name:>10}: {value:.4f}")
    typer.echo(f"{'images/s':>10}: {result.images_per_s:,.0f}   ({result.n} images, batch {batch_size}, "
               f"{result.seconds:.1f} s)")
