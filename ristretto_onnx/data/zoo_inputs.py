"""``zoo:NAME`` in the Python API, with the same defaults as the command line.

``compress("zoo:lenet-mnist")`` takes the zoo model's file, its test set as evaluation data and
its calibration split (seeded subset of ``calib_size``) exactly as ``ristretto-onnx compress
zoo:lenet-mnist`` does, so the API and the CLI give the same result (issue 10).
"""

from __future__ import annotations

from typing import Any


def is_zoo(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith("zoo:")


def zoo_inputs(model: Any, data: Any = None, calib: Any = None) -> tuple[Any, Any, Any]:
    """``(model path, data, calib)``: a ``zoo:`` model resolved, its splits filling ``None``s."""
    if not is_zoo(model):
        return model, data, calib
    from ristretto_onnx import zoo

    name = model[4:]
    path = str(zoo.resolve_model(model))
    if data is None:
        data = zoo.model_dataset(name, "test")
    if calib is None:
        calib = zoo.model_dataset(name, "calib")
    return path, data, calib
