"""Load and validate a model: the first step of every pipeline.

Everything after this step may assume a well-formed graph with inferred shapes, float tensors
typed, and a default-domain opset in the range the QuantizeSim function bodies support
(:data:`~ristretto_onnx.ops.MIN_OPSET` and up). Models on opset 11 or 12 are upgraded to 13 with
the ONNX version converter; opsets 13 to 21 are kept as they are.

Models larger than 2 GB cannot be serialized as one protobuf, which the checker and shape
inference need; for those, the model is written to a temporary folder with external data and
checked and inferred from the path instead; a proto of the pipeline whose weights are still
references into their data file is checked in memory with those weights declared as inputs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx import ModelProto, helper, version_converter

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.ops import MIN_OPSET, default_opset
from ristretto_onnx.passes import save as _save
from ristretto_onnx.passes.external import check_payload_sizes, has_external, is_external, resolve_locations
from ristretto_onnx.validate import validate

#: Default-domain opsets accepted as input.
MIN_INPUT_OPSET = 11
MAX_INPUT_OPSET = 21


def load_model(source: str | os.PathLike | ModelProto, *, check: bool = True) -> ModelProto:
    """A validated, shape-inferred copy of ``source`` (a path or a ModelProto) on opset >= 13.

    ``source`` itself is never modified. Weights in external data next to a model file stay
    there: the proto refers to them (:mod:`ristretto_onnx.passes.external`).
    """
    model = _read(source)
    opset = _opset(model)
    if has_external(model) and not isinstance(source, ModelProto):  # weights stay on disk
        if check:
            model = _checked_and_inferred_light(model, Path(source))
        resolve_locations(model, Path(source).parent)
        check_payload_sizes(model)
    elif check:  # a proto of this pipeline with external weights is checked on disk
        model = _checked_and_inferred(model)
    if opset < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as e:  # the converter raises bare RuntimeErrors with C++ text
            raise RistrettoError(f"cannot convert the model from opset {opset} to {MIN_OPSET}: "
                                 f"{_first_line(e)}") from None
        if check:
            model = _checked_and_inferred(model)
    return model


def read_model(model: str | os.PathLike | ModelProto, *, weights_in_memory: bool = True) -> ModelProto:
    """A ModelProto from a proto (as it is) or a path, unchecked; one-line error for a missing or
    unreadable file. ``weights_in_memory=False``: external weights stay in their file, referred to
    relative to :data:`~ristretto_onnx.passes.external.ROOT` (passes.external)."""
    if isinstance(model, ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise RistrettoError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=weights_in_memory)
    except Exception as e:  # noqa: BLE001 - protobuf errors are long and technical
        raise RistrettoError(f"cannot read {path} as an ONNX model: {' '.join(str(e).split())[:200]}") from None
    if not weights_in_memory and has_external(proto):
        resolve_locations(proto, path.parent)
    return proto


def _read(source: str | os.PathLike | ModelProto) -> ModelProto:
    if isinstance(source, ModelProto):
        model = ModelProto()
        model.CopyFrom(source)
        return model
    path = Path(source)
    if not path.is_file():
        raise RistrettoError(f"model file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)  # external weights: see load_model
    except Exception as e:  # protobuf DecodeError, missing external data file ...
        raise RistrettoError(f"cannot read ONNX model {path}: {_first_line(e)}") from None


def _opset(model: ModelProto) -> int:
    try:
        opset = default_opset(model)
    except RistrettoError:
        raise RistrettoError("the model imports no version of the default ONNX domain") from None
    if not MIN_INPUT_OPSET <= opset <= MAX_INPUT_OPSET:
        raise RistrettoError(f"the model uses opset {opset}; supported are opsets "
                             f"{MIN_INPUT_OPSET} to {MAX_INPUT_OPSET}")
    return opset


def _checked_and_inferred(model: ModelProto) -> ModelProto:
    validate(model)  # what onnx.checker leaves to onnxruntime (corrupt initializers, no outputs ...)
    if _save.inline_over_limit(model):
        return _checked_and_inferred_on_disk(model)
    if has_external(model):  # a proto of this pipeline whose weights stay in their file
        return _checked_and_inferred_headers(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise RistrettoError(f"the model is not valid ONNX: {_first_line(e)}") from None
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as e:
        raise RistrettoError(f"shape inference failed: {_first_line(e)}") from None


def _checked_and_inferred_light(model: ModelProto, path: Path) -> ModelProto:
    """Check and infer a model whose weights are external, from its own file (nothing copied)."""
    validate(model)
    with tempfile.TemporaryDirectory(prefix="ristretto-load-") as tmp:
        return _check_path_and_take_types(model, path, Path(tmp) / "inferred.onnx")


def _checked_and_inferred_headers(model: ModelProto) -> ModelProto:
    """Check and infer a proto whose weights are references into their data file, in memory.

    The checker resolves an in-memory proto's external locations against the working folder,
    not :data:`~ristretto_onnx.passes.external.ROOT`, and saving a copy to check it would copy
    every weight (gigabytes on the models that have them). The weights' bytes were checked
    against their shapes when the file was loaded (``check_payload_sizes``); what the checker
    and shape inference need of them is their type and shape, so the copy checked here declares
    each weight on disk as a graph input of that type and shape instead of an initializer.
    """
    headers = ModelProto()
    headers.CopyFrom(model)  # small: the weights on disk are references
    graph = headers.graph
    inputs = {i.name for i in graph.input}
    for index in reversed(range(len(graph.initializer))):
        t = graph.initializer[index]
        if is_external(t):
            if t.name not in inputs:
                graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            del graph.initializer[index]
    try:
        onnx.checker.check_model(headers)
    except onnx.checker.ValidationError as e:
        raise RistrettoError(f"the model is not valid ONNX: {_first_line(e)}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(headers)
    except Exception as e:
        raise RistrettoError(f"shape inference failed: {_first_line(e)}") from None
    return _take_types(model, inferred)


def _checked_and_inferred_on_disk(model: ModelProto) -> ModelProto:
    with tempfile.TemporaryDirectory(prefix="ristretto-load-") as tmp:
        path = Path(tmp) / "model.onnx"
        inferred = Path(tmp) / "inferred.onnx"
        _save.save_model(model, path, external_data=True)
        return _check_path_and_take_types(model, path, inferred)


def _check_path_and_take_types(model: ModelProto, path: Path, inferred: Path) -> ModelProto:
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise RistrettoError(f"the model is not valid ONNX: {_first_line(e)}") from None
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred))
    except Exception as e:
        raise RistrettoError(f"shape inference failed: {_first_line(e)}") from None
    # Take only the inferred types, not a second copy of the weights (peak memory: bench/
    # external_data.py): the shapes land in value_info and the graph outputs.
    return _take_types(model, onnx.load(str(inferred), load_external_data=False))


def _take_types(model: ModelProto, header: ModelProto) -> ModelProto:
    del model.graph.value_info[:]
    model.graph.value_info.extend(header.graph.value_info)
    for out, typed in zip(model.graph.output, header.graph.output):
        out.CopyFrom(typed)
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(e).__name__
