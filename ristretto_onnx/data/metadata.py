"""The preprocessing a written model records, so it is scored on the inputs it was built for.

A compressed ResNet-20 evaluated on raw CIFAR-10 pixels scores 11 % instead of 80 % without any
warning (issue 10): the model did not remember how its input was prepared. Every model
``compress`` and ``quantize`` write therefore carries one ``metadata_props`` entry,
``ristretto.preprocess``, a JSON object with scale, mean, std, resize, crop, the layout
(``add_channel_axis``/``channels_last`` for how raw arrays become the model's NCHW input) and the
label offset (model class = dataset label + offset). ``eval`` and the Python API apply it by
default and say so; an explicit flag wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
from onnx import ModelProto

from ristretto_onnx.data.preprocess import Preprocess
from ristretto_onnx.errors import RistrettoError, UsageError

KEY = "ristretto.preprocess"
_FIELDS = ("scale", "mean", "std", "resize", "crop", "add_channel_axis", "channels_last")


def to_json(pre: Preprocess, *, label_offset: int = 0) -> str:
    d = {f: getattr(pre, f) for f in _FIELDS}
    d["mean"] = list(d["mean"]) if d["mean"] is not None else None
    d["std"] = list(d["std"]) if d["std"] is not None else None
    d["layout"] = "NCHW"
    d["label_offset"] = int(label_offset)
    d["text"] = str(pre)
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def from_json(text: str) -> tuple[Preprocess, int]:
    """``(preprocess, label_offset)`` from the JSON object, or from the compact string form
    (``scale=1/255;add_channel_axis``) that the embedded digits model records."""
    if not text.lstrip().startswith("{"):
        return Preprocess.parse(text), 0
    try:
        d = json.loads(text)
        pre = Preprocess(**{f: d.get(f) if f not in ("add_channel_axis", "channels_last")
                            else bool(d.get(f)) for f in _FIELDS})
        return pre, int(d.get("label_offset", 0))
    except (ValueError, TypeError, AttributeError) as e:
        raise RistrettoError(f"the model's {KEY} metadata is not readable: {e}") from None


def record(model: ModelProto, pre: Preprocess, *, label_offset: int = 0) -> ModelProto:
    """Set (or replace) the ``ristretto.preprocess`` entry of ``model`` in place; returns it."""
    text = to_json(pre, label_offset=label_offset)
    for prop in model.metadata_props:
        if prop.key == KEY:
            prop.value = text
            return model
    entry = model.metadata_props.add()
    entry.key, entry.value = KEY, text
    return model


def recorded(model: ModelProto | str | os.PathLike) -> tuple[Preprocess, int] | None:
    """The recorded ``(preprocess, label_offset)`` of a model or model file, or ``None``.

    A path is read without its external data (only the small header matters here).
    """
    if not isinstance(model, ModelProto):
        path = Path(model)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # unreadable models fail later with the loader's own message
            return None
    for prop in model.metadata_props:
        if prop.key == KEY:
            return from_json(prop.value)
    return None


def with_label_offset(dataset, offset: int | None):
    """``dataset`` with ``--label-offset`` applied (``None``: unchanged); a usage error when the
    offset makes a label negative (model classes start at 0)."""
    if dataset is None or offset is None:
        return dataset
    labels = dataset.labels
    if labels is not None and len(labels) and int(labels.min()) + offset < 0:
        raise UsageError(f"--label-offset {offset} makes label {int(labels.min())} of {dataset.name} "
                         f"negative ({int(labels.min()) + offset}); model classes start at 0")
    return dataset.with_label_offset(offset)


def header(model: ModelProto | str | os.PathLike) -> ModelProto | None:
    """The model without its external data (graph, inputs, metadata), or ``None`` if unreadable."""
    if isinstance(model, ModelProto):
        return model
    try:
        return onnx.load(str(model), load_external_data=False)
    except Exception:  # the loader reports unreadable models with its own message
        return None


def dataset_for(model: ModelProto | str | os.PathLike, source, preprocess: Preprocess | None = None, *,
                label_offset: int | None = None):
    """``(dataset, note)``: ``source`` prepared as ``model`` recorded, fitted to its input.

    ``preprocess`` (explicit flags) wins; else a :class:`Dataset` keeps its own; else the
    model's recorded preprocessing applies and ``note`` says so (one line, for the user).
    ``label_offset`` (``--label-offset``) wins over the recorded offset likewise.
    """
    from ristretto_onnx.data import Dataset, load_dataset
    from ristretto_onnx.data.conform import conform

    proto = header(model)
    rec = recorded(proto) if proto is not None else None
    note = None
    if preprocess is None and not isinstance(source, Dataset) and rec is not None:
        preprocess = rec[0]
        note = (f"using the preprocessing recorded in the model ({preprocess}); "
                "--scale/--mean/--std/--resize/--crop override it")
    loaded = not isinstance(source, Dataset)  # a Dataset is taken as already prepared
    dataset = load_dataset(source, preprocess)
    if label_offset is not None:
        dataset = with_label_offset(dataset, label_offset)
    elif loaded and rec is not None and rec[1]:
        dataset = dataset.with_label_offset(rec[1])
    if proto is not None:
        dataset = conform(dataset, proto)
    return dataset, note
