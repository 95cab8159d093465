"""Fit a dataset to a model's input, and check that its labels fit the model's outputs.

Every command and the Python API read data the same way (issue 10): MNIST's own uint8 (N,H,W)
arrays, (N,H,W,C) pixels and float data in NCHW or NHWC all reach a model with an (N,C,H,W)
input, and anything that cannot fit is a one-line error naming the expected and the given
shape, before onnxruntime sees a batch (its own message is C++ text about ranks). The thesis's
flow (section 9.2) calibrates and scores on exactly the inputs the network was trained on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from onnx import ModelProto, TensorProto

from ristretto_onnx.data.datasets import Dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.graph import single_input_info


def _dims(value_info) -> tuple[int | None, ...] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)


def _show(shape) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in shape) + ")"


def _fits(item: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(item) == len(expected) and all(e is None or e == d for d, e in zip(item, expected))


def conform(dataset: Dataset, model: ModelProto) -> Dataset:
    """``dataset`` as the model's input needs it (a channel axis added, NHWC float transposed).

    Raises a one-line :class:`RistrettoError` for empty data, a model input that is not float,
    a shape that cannot fit, and labels outside ``0 .. classes-1`` of the model's output.
    """
    if len(dataset) == 0:
        raise RistrettoError(f"dataset {dataset.name} is empty")
    inp = single_input_info(model, "reading data")
    elem = inp.type.tensor_type.elem_type
    if elem not in (TensorProto.FLOAT, 0):
        raise RistrettoError(f"the model's input {inp.name!r} is {TensorProto.DataType.Name(elem)}; "
                             "ristretto-onnx feeds float32 images")
    dims = _dims(inp)
    if dims is not None and len(dims) >= 1:
        if dims[0] is not None:  # onnxruntime would refuse every batch of another size
            raise RistrettoError(f"the model's input {inp.name!r} has a fixed batch dimension of {dims[0]}; "
                                 "ristretto-onnx runs batches of any size: export the model with a dynamic "
                                 "batch dimension")
        dataset = _fit_shape(dataset, inp.name, dims[1:])
    check_labels(dataset, model)
    return dataset


def _fit_shape(dataset: Dataset, name: str, expected: tuple[int | None, ...]) -> Dataset:
    try:
        item = dataset.sample_shape
    except RistrettoError:
        if not dataset.preprocess.add_channel_axis:
            raise
        # a grayscale recipe (recorded in the model) on colour data: report the data's real shape
        dataset = dataset.with_preprocess(dataclasses.replace(dataset.preprocess, add_channel_axis=False))
        item = dataset.sample_shape
    if _fits(item, expected):
        return dataset
    pre = dataset.preprocess
    tries = []
    if len(item) == 2 and not pre.add_channel_axis:  # (N,H,W) grayscale -> (N,1,H,W)
        tries.append(dataclasses.replace(pre, add_channel_axis=True))
    if len(item) == 3 and not pre.channels_last and _is_float(dataset):  # (N,H,W,C) float
        tries.append(dataclasses.replace(pre, channels_last=True))
    for candidate in tries:
        try:
            fitted = dataset.with_preprocess(candidate)
            if _fits(fitted.sample_shape, expected):
                return fitted
        except RistrettoError:
            continue
    raw = getattr(dataset, "images", None)
    given = f" (stored as {_show(raw.shape)} {raw.dtype})" if raw is not None else ""
    raise RistrettoError(f"{dataset.name}: the model's input {name!r} takes (N,C,H,W) = "
                         f"{_show(('N',) + expected)} but the data gives items of "
                         f"shape {_show(item)}{given}; give uint8 (N,H,W) or (N,H,W,C) images, or "
                         "float data in NCHW or NHWC")


def _is_float(dataset: Dataset) -> bool:
    raw = getattr(dataset, "images", None)
    return raw is not None and raw.dtype.kind == "f"


def _classes(model: ModelProto) -> int | None:
    if len(model.graph.output) == 0:
        return None
    dims = _dims(model.graph.output[0])
    if not dims or len(dims) < 2 or dims[-1] is None:
        return None
    return int(np.prod([d for d in dims[1:]])) if all(d is not None for d in dims[1:]) else None


def check_labels(dataset: Dataset, model: ModelProto) -> None:
    """Labels must lie in ``0 .. classes-1`` where the model's output size is known."""
    labels = dataset.labels
    if labels is None or len(labels) == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise RistrettoError(f"{dataset.name}: labels must be class indices >= 0, found {lo}")
    classes = _classes(model)
    if classes is not None and hi >= classes:
        raise RistrettoError(f"{dataset.name}: labels go up to {hi} but the model has {classes} "
                             f"outputs (classes 0 to {classes - 1})")
