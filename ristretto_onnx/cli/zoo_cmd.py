"""``ristretto-onnx zoo``: list, describe, score and rebuild the zoo's models and datasets."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import typer

from ristretto_onnx import zoo
from ristretto_onnx.cli.app import app
from ristretto_onnx.data import Dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.zoo.entries import ModelEntry
from ristretto_onnx.zoo.store import find

zoo_app = typer.Typer(help="Pretrained FP32 models and datasets: list, info, eval, build-default.",
                      no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _status(entry: zoo.Entry, verify: bool) -> str:
    if not entry.found:
        return "missing"
    if verify:
        try:
            entry.locate(verify=True)
        except RistrettoError:
            return "corrupt"
        return "verified"
    return "found"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


@zoo_app.command("list")
def list_command(
    kind: str = typer.Option(None, "--kind", help="Only 'model' or 'dataset' entries."),
    verify: bool = typer.Option(False, "--verify", help="Check each found file's sha256 (cached)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per entry."),
) -> None:
    """Every entry: kind, whether its files are on the search path, FP32 accuracies."""
    entries = zoo.list_entries(kind)
    rows = [["name", "kind", "status", "top-1 measured", "top-1 published", "size"]]
    for e in entries:
        status = _status(e, verify)
        measured = e.fp32_top1_measured if isinstance(e, ModelEntry) else None
        published = e.fp32_top1_published if isinstance(e, ModelEntry) else None
        size = (f"on {e.dataset}" if isinstance(e, ModelEntry)
                else f"{e.count} images, {e.num_classes} classes")
        if as_json:
            typer.echo(json.dumps({"name": e.name, "kind": e.kind, "status": status,
                                   "fp32_top1_measured": measured,
                                   "fp32_top1_published": published}))
        rows.append([e.name, e.kind, status, _percent(measured), _percent(published), size])
    if not as_json:
        typer.echo(_table(rows))
        typer.echo(f"search path: {', '.join(str(p) for p in zoo.search_path())} "
                   f"(set {zoo.store.ENV_VAR} to add folders)")


@zoo_app.command("info")
def info_command(
    name: str = typer.Argument(..., help="A zoo entry, e.g. lenet-mnist or mnist-test."),
    as_json: bool = typer.Option(False, "--json", help="Print the entry as one JSON object."),
) -> None:
    """All recorded facts about one entry, and where its files are."""
    entry = zoo.get(name)
    facts: dict[str, object] = {"kind": entry.kind}
    for f in fields(entry):
        value = getattr(entry, f.name)
        if f.name == "files":
            value = [{"path": z.display, "sha256": z.sha256, "bytes": z.size,
                      "found_at": str(find(z)) if find(z) else None} for z in value]
        elif f.name == "preprocess":
            value = str(value)
        elif f.name == "classes" and len(value) > 12:
            value = list(value[:12]) + ["..."]
        facts[f.name] = value if not isinstance(value, tuple) else list(value)
    if as_json:
        typer.echo(json.dumps(facts))
        return
    for key, value in facts.items():
        if key == "files":
            for z in value:  # type: ignore[union-attr]
                where = z["found_at"] or "MISSING"
                typer.echo(f"{'file':<20} {z['path']}  ->  {where}")
        elif value not in ("", (), [], None):
            if isinstance(value, list):
                value = ", ".join(map(str, value))
            if isinstance(value, float) and key.startswith("fp32"):
                value = _percent(value)
            typer.echo(f"{key:<20} {value}")


def _evaluate(model_path: Path, dataset: Dataset, batch_size: int) -> dict[str, float]:
    """Top-1/top-5 of an FP32 model over a dataset, with the runtime's evaluation."""
    from ristretto_onnx.runtime.evaluate import evaluate

    if dataset.labels is None:
        raise RistrettoError(f"{dataset.name} has no labels: cannot score accuracy")
    result = evaluate(model_path, dataset, ("top1", "top5"), batch_size=batch_size, progress=False)
    return {"top1": result["top1"], "top5": result["top5"], "images": result.n}


@zoo_app.command("eval")
def eval_command(
    name: str = typer.Argument(..., help="A zoo model, e.g. lenet-mnist."),
    split: str = typer.Option("test", "--split", help="'test' or 'calib' (calibration/train)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N images."),
    batch_size: int = typer.Option(100, "--batch-size", min=1, help="Images per inference."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Score a zoo model's FP32 accuracy on its own data and compare with the recorded figure."""
    model = zoo.get_model(name)
    model_path = model.locate()
    dataset = zoo.model_dataset(model.name, split)
    if limit is not None:
        dataset = dataset.take(limit)
    scores = _evaluate(model_path, dataset, batch_size)
    recorded = model.fp32_top1_measured if split == "test" and limit is None else None
    if as_json:
        typer.echo(json.dumps({"model": model.name, "dataset": dataset.name, **scores,
                               "recorded_top1": recorded}))
        return
    line = (f"{model.name} on {dataset.name} ({scores['images']} images): top-1 "
            f"{_percent(scores['top1'])}, top-5 {_percent(scores['top5'])}")
    if recorded is not None:
        line += f" (recorded: {_percent(recorded)})"
    typer.echo(line)


@zoo_app.command("build-default")
def build_default_command(
    out: Path = typer.Option(None, "--out", help="Output folder (default: the zoo package); must exist."),
    force: bool = typer.Option(False, "--force", help="Overwrite the three files if they exist."),
) -> None:
    """Retrain and export the embedded digits-cnn model and its data (deterministic)."""
    from ristretto_onnx.cli.outputs import check_outputs
    from ristretto_onnx.zoo import digits

    from ristretto_onnx.zoo.store import package_dir

    folder = out if out is not None else package_dir()
    check_outputs([folder / name for name in (digits.MODEL_FILE, digits.CALIB_FILE, digits.TEST_FILE)],
                  force=force)

    typer.echo(digits.build(out).summary())
