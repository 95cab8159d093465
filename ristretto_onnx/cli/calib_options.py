"""Helpers shared by the commands: data sets and layer patterns from flags."""

from __future__ import annotations

import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from ristretto_onnx.data import DATA_OPTION_HELP, Dataset, load_dataset, preprocess_from_cli
from ristretto_onnx.data.metadata import with_label_offset
from ristretto_onnx.errors import RistrettoError


# The preprocessing flags every data-reading command takes, declared once:
# ``scale: ScaleOption = None`` in a command's signature.
ScaleOption = Annotated[Optional[str], typer.Option("--scale", help=DATA_OPTION_HELP["scale"])]
MeanOption = Annotated[Optional[str], typer.Option("--mean", help=DATA_OPTION_HELP["mean"])]
StdOption = Annotated[Optional[str], typer.Option("--std", help=DATA_OPTION_HELP["std"])]
ResizeOption = Annotated[Optional[str], typer.Option("--resize", help=DATA_OPTION_HELP["resize"])]
CropOption = Annotated[Optional[str], typer.Option("--crop", help=DATA_OPTION_HELP["crop"])]
LabelOffsetOption = Annotated[Optional[int], typer.Option(
    "--label-offset", help="Added to every label of the data: model class = label + N (e.g. -1 for "
                           "1-based labels). Default: what the model recorded, else 0.")]
#: ``calib_size: CalibSizeOption = QuantizeOptions.calib_size``: the options' default, in every command.
CalibSizeOption = Annotated[int, typer.Option("--calib-size", help="Calibration images (seeded subset; the same "
                                                                   "default in every command and the Python API).")]
PREPROCESS_FLAGS = {"scale": ScaleOption, "mean": MeanOption, "std": StdOption, "resize": ResizeOption,
                    "crop": CropOption}


def preprocessing_options(command):
    """Give a command the preprocessing flags (--scale --mean --std --resize --crop, last in its
    options): the command takes them as one argument ``flags``, a dict of the five values (None
    where not given), ready for :func:`check_flags` and :func:`open_split`. Below ``@app.command``."""
    hints = typing.get_type_hints(command, include_extras=True)
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in inspect.signature(command).parameters.values() if p.name != "flags"]
    params += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=option)
               for name, option in PREPROCESS_FLAGS.items()]

    @functools.wraps(command)
    def with_flags(*args, **kwargs):
        flags = {name: kwargs.pop(name, None) for name in PREPROCESS_FLAGS}
        return command(*args, flags=flags, **kwargs)

    with_flags.__signature__ = inspect.Signature(params, return_annotation=None)
    with_flags.__annotations__ = {p.name: p.annotation for p in params}
    return with_flags



def check_flags(**flags) -> None:
    """Parse the preprocessing flags once up front, so a bad value is a usage error (exit 2)."""
    if any(v is not None for v in flags.values()):
        preprocess_from_cli(**flags)


def resolve_input(spec: str) -> Path:
    """The model file for ``IN`` (a path or ``zoo:NAME``)."""
    from ristretto_onnx import zoo

    return Path(zoo.resolve_model(spec))


def open_split(spec: str | None, model_spec: str, split: str, *, scale=None, mean=None, std=None,
               resize=None, crop=None, label_offset: int | None = None) -> Dataset | None:
    """A dataset from ``spec`` with the preprocessing flags, or for a zoo model without ``spec``
    its own ``split`` (``"test"`` or ``"calib"``); ``None`` when there is neither.

    For a zoo model the flags modify its own preprocessing, so ``--crop`` alone is enough.
    ``label_offset`` (``--label-offset``) wins over the offset the model recorded."""
    from ristretto_onnx import zoo

    from ristretto_onnx.data.metadata import recorded

    flags = dict(scale=scale, mean=mean, std=std, resize=resize, crop=crop)
    # The base is the zoo model's preprocessing, or what the model file recorded; flags modify it.
    rec = None
    if model_spec.startswith("zoo:"):
        base = zoo.get_model(model_spec).preprocess
    else:
        rec = recorded(model_spec) if spec is not None and Path(model_spec).is_file() else None
        base = rec[0] if rec is not None else None
    pre = preprocess_from_cli(**flags, base=base) if any(v is not None for v in flags.values()) else base
    if spec is None:
        if model_spec.startswith("zoo:"):
            return with_label_offset(zoo.model_dataset(model_spec[4:], split, pre), label_offset)
        return None
    if label_offset is None and rec is not None and rec[1]:
        label_offset = rec[1]
    return with_label_offset(load_dataset(spec, pre), label_offset)


def open_calibration(calib: str | None, model_spec: str, **flags) -> Dataset | None:
    """The calibration dataset: ``--calib``, or a zoo model's calibration split."""
    return open_split(calib, model_spec, "calib", **flags)


def split_patterns(values: list[str] | None) -> tuple[str, ...]:
    """Regexes from repeatable options that may also hold comma-separated lists.

    Commas inside ``{}``, ``[]`` or ``()`` belong to the regex (``conv{1,2}``) and do not split.
    """
    out: list[str] = []
    for value in values or ():
        depth, start = 0, 0
        for i, ch in enumerate(value):
            if ch in "{[(":
                depth += 1
            elif ch in "}])":
                depth = max(0, depth - 1)
            elif ch == "," and depth == 0:
                out.append(value[start:i])
                start = i + 1
        out.append(value[start:])
    patterns = tuple(p.strip() for p in out if p.strip())
    if values and not patterns:
        raise RistrettoError("empty layer pattern")
    return patterns
