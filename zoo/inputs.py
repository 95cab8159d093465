"""``zoo:NAME`` in the Python API, with the same defaults as the command line.

``compress("zoo:lenet-mnist")`` takes the zoo model's file, its test set as evaluation data and
its calibration split (seeded subset of ``calib_size``) exactly as ``ristretto-onnx compress
zoo:lenet-mnist`` does, and data given as files or arrays gets the zoo model's preprocessing as
``--data`` does, so the API and the CLI give the same result (issue 10).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ristretto_onnx import zoo
from ristretto_onnx.data import Dataset, load_dataset


def is_zoo(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith("zoo:")


def zoo_inputs(model: Any, data: Any = None, calib: Any = None) -> tuple[Any, Any, Any]:
    """``(model path, data, calib)``: a ``zoo:`` model resolved, its splits filling ``None``s."""
    if not is_zoo(model):
        return model, data, calib
    name = model[4:]
    path = str(zoo.resolve_model(model))
    data = zoo.model_dataset(name, "test") if data is None else _prepared(data, zoo.get_model(name).preprocess)
    calib = zoo.model_dataset(name, "calib") if calib is None else _prepared(calib, zoo.get_model(name).preprocess)
    return path, data, calib


def _prepared(source: Any, preprocess) -> Any:
    """Files and arrays get the zoo model's preprocessing (as ``--data`` does); Datasets and
    ``zoo:`` datasets keep their own."""
    if isinstance(source, (Dataset, tuple)) or is_zoo(source):
        return source
    if isinstance(source, (str, os.PathLike, np.ndarray)):
        return load_dataset(source, preprocess)
    return source
