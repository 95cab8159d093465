"""Weights that stay on disk: models over 2 GB go through the passes as external-data references.

A model over 2 GB keeps its weights in a side file (ONNX external data). Loading them into the
ModelProto would put one copy of every weight in memory per stage that holds a proto (the FP32
reference, the annotated model, the simulated model, the sessions): 4.4x the model's size on a
2.5 GB model (issue 10, Deliver 8). Instead, :func:`load_light` leaves the weights in the file and
rewrites each tensor's ``location`` to a path relative to :data:`ROOT` (the file system's root),
so any proto of the pipeline, copied or not, can be read wherever it goes:

* the passes read a weight with :func:`tensor_array` (no change to the proto, no cached copy),
  or a block of rows at a time with :func:`row_blocks` (large weights are read in chunks);
* onnxruntime gets the proto as bytes and :data:`ROOT` as its external-data folder
  (:func:`session_folder_entry`), and reads the file itself;
* :func:`~ristretto_onnx.passes.save.save_model` copies the referenced bytes into the output's
  own ``.data`` file in chunks (:func:`copy_payload`), so the output is consistent and
  self-contained, and the input's data file is only ever read.

The thesis's flow (9.2) is unchanged: this only decides where the numbers live.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo

from ristretto_onnx.errors import RistrettoError

#: External-data locations in memory are relative to this folder (never absolute: onnx and
#: onnxruntime refuse absolute locations).
ROOT = os.path.abspath(os.sep)
#: Bytes read or written at a time when streaming a weight (bounds the temporaries).
CHUNK_BYTES = 16 << 20
#: onnxruntime's session config key for the folder of a model given as bytes.
FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def is_external(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL


def has_external(model: ModelProto) -> bool:
    """Some initializer of ``model``'s top-level graph is still on disk."""
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def _info(t: TensorProto) -> ExternalDataInfo:
    """``t``'s location, offset and length, parsed and range-checked by onnx."""
    try:
        return ExternalDataInfo(t)
    except ValueError as e:  # a negative offset or length
        raise RistrettoError(str(e)) from None  # names the tensor


def resolve_locations(model: ModelProto, folder: str | os.PathLike) -> None:
    """Make the external locations of ``model`` (relative to ``folder``) relative to :data:`ROOT`."""
    folder = os.path.abspath(folder)
    for t in model.graph.initializer:
        if not is_external(t):
            continue
        for entry in t.external_data:
            if entry.key == "location":
                path = os.path.normpath(os.path.join(folder, entry.value))
                if not os.path.isfile(path):
                    raise RistrettoError(f"initializer {t.name!r}: its external data file {entry.value} "
                                         f"is missing next to the model")
                entry.value = os.path.relpath(path, ROOT)


def check_payload_sizes(model: ModelProto) -> None:
    """Each external initializer's bytes lie inside its file and match its dims and type
    (what :func:`~ristretto_onnx.validate.check_initializer` checks for embedded ones)."""
    sizes: dict[Path, int] = {}
    for t in model.graph.initializer:
        if not is_external(t):
            continue
        path = data_path(t)
        if path not in sizes:
            sizes[path] = path.stat().st_size
        offset, length = _span(t)
        expected = int(np.prod(t.dims, dtype=np.int64)) * _dtype(t).itemsize
        if length != expected or offset < 0 or offset + length > sizes[path]:
            raise RistrettoError(f"initializer {t.name!r}: its external data ({length} bytes at offset "
                                 f"{offset} of {path.name}) does not match its shape {list(t.dims)}: "
                                 "the data file is corrupt or truncated")


def data_path(t: TensorProto) -> Path:
    """The file holding ``t``'s bytes (after :func:`resolve_locations`)."""
    return Path(ROOT) / _info(t).location


def _span(t: TensorProto) -> tuple[int, int]:
    info = _info(t)
    length = info.length
    if length is None:
        length = int(np.prod(t.dims, dtype=np.int64)) * _dtype(t).itemsize
    return info.offset or 0, int(length)


def _dtype(t: TensorProto) -> np.dtype:
    if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        raise RistrettoError(f"initializer {t.name!r}: cannot read external data of this type")
    return np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")


def tensor_array(t: TensorProto) -> np.ndarray:
    """``t``'s value (read from its file when external; ``t`` itself is never changed)."""
    if not is_external(t):
        return numpy_helper.to_array(t)
    return tensor_rows(t, 0, t.dims[0] if t.dims else 1)


def tensor_rows(t: TensorProto, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``t`` along its first axis (a scalar: the whole value)."""
    if not is_external(t):
        value = numpy_helper.to_array(t)
        return value if value.ndim == 0 else value[start:stop]
    dtype = _dtype(t)
    dims = tuple(int(d) for d in t.dims)
    row = int(np.prod(dims[1:], dtype=np.int64)) if dims else 1
    offset, length = _span(t)
    count = (stop - start) * row
    if (start + (stop - start)) * row * dtype.itemsize > length:
        raise RistrettoError(f"initializer {t.name!r}: its external data is shorter than its shape")
    try:
        with open(data_path(t), "rb") as f:
            f.seek(offset + start * row * dtype.itemsize)
            value = np.fromfile(f, dtype=dtype, count=count)
    except OSError as e:
        raise RistrettoError(f"cannot read the external data of {t.name!r}: {e.strerror or e}") from None
    if value.size != count:
        raise RistrettoError(f"initializer {t.name!r}: its external data file is truncated")
    value = value.astype(dtype.newbyteorder("="), copy=False)
    return value.reshape((stop - start, *dims[1:]) if dims else ())


def row_chunks(t: TensorProto) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges of about :data:`CHUNK_BYTES` covering ``t``'s first axis."""
    dims = [int(d) for d in t.dims]
    if not dims:
        yield 0, 1
        return
    row_bytes = max(1, int(np.prod(dims[1:], dtype=np.int64)) * _dtype(t).itemsize)
    step = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, dims[0], step):
        yield start, min(dims[0], start + step)


def row_blocks(t: TensorProto) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, rows)`` for each of :func:`row_chunks`: ``t``'s value a block of rows at a time."""
    for start, stop in row_chunks(t):
        yield start, stop, tensor_rows(t, start, stop)


def payload_size(t: TensorProto) -> int:
    return _span(t)[1]


def copy_payload(t: TensorProto, out) -> int:
    """Append ``t``'s external bytes to the open binary file ``out`` in chunks; returns the length."""
    offset, length = _span(t)
    try:
        with open(data_path(t), "rb") as f:
            f.seek(offset)
            left = length
            while left:
                block = f.read(min(left, CHUNK_BYTES))
                if not block:
                    raise RistrettoError(f"the external data of {t.name!r} is truncated")
                out.write(block)
                left -= len(block)
    except OSError as e:
        raise RistrettoError(f"cannot read the external data of {t.name!r}: {e.strerror or e}") from None
    return length


def session_folder_entry(so) -> None:
    """Let an onnxruntime session built from bytes find the external data (see the docstring)."""
    so.add_session_config_entry(FOLDER_KEY, ROOT)

