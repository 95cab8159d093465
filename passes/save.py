"""Write a model to disk atomically, with external data when it is too large for one protobuf.

A half-written output is worse than none: a later step (or a user) would load a truncated model.
So the model is written to a temporary file in the destination folder and renamed over the
destination only once it is complete; on any error (or SIGINT/SIGTERM) the temporary files are
removed. The finished file gets the permissions an ordinary ``open()`` would give it (0666 less
the umask), not the 0600 of a temporary file: in a container the output must stay readable by
the user on the bind mount.

Protobuf cannot serialize more than 2 GB. Larger models keep their big initializers in a side file
``<name>.data`` next to the model (ONNX external data, offsets aligned to 4 KiB so onnxruntime
can map them). Unlike ``onnx.save(..., save_as_external_data=True)`` this never converts the
caller's proto in place and never holds a second copy of the weights in memory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.message import Message
from onnx import ModelProto, TensorProto, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.external import copy_payload, has_external, is_external

#: Largest model serialized as a single protobuf (a module constant so tests can lower it).
PROTO_LIMIT = 2**31 - 1
#: Initializers at least this large go to the data file when saving with external data.
EXTERNAL_MIN_BYTES = 1024
_ALIGN = 4096


def needs_external_data(model: ModelProto) -> bool:
    """Weights are on disk already (the output gets its own file) or too large for one protobuf."""
    return has_external(model) or inline_over_limit(model)


def inline_over_limit(model: ModelProto) -> bool:
    """What ``model`` holds in memory cannot be serialized as one protobuf."""
    # Below the limit ByteSize() is exact; above 2 GB some protobuf builds (upb) raise instead of
    # answering, and the initializers alone tell (without the 2 GB cap of ByteSize()).
    payload = 0
    for t in model.graph.initializer:
        try:
            payload += t.ByteSize()  # no copy of the bytes (len(t.raw_data) would make one)
        except Exception:  # noqa: BLE001 - one tensor over 2 GB
            return True
        if payload > PROTO_LIMIT:
            return True
    try:
        return model.ByteSize() > PROTO_LIMIT
    except Exception:  # noqa: BLE001 - protobuf's EncodeError: too large to serialize
        return True


def save_model(model: ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; ``external_data=None`` decides by size."""
    path = Path(path)
    folder = _folder_of(path)
    use_external = needs_external_data(model) if external_data is None else external_data
    with _one_write(path) as tmp_files:
        if use_external:
            data_name = f"{path.name}.data"
            tmp_data = _temp_path(folder, data_name)
            tmp_files.append(tmp_data)
            light = _externalized(model, tmp_data, data_name)
            tmp_model = _write_temp(folder, path.name, light.SerializeToString(), tmp_files)
            os.replace(tmp_data, folder / data_name)
        else:
            tmp_model = _write_temp(folder, path.name, model.SerializeToString(), tmp_files)
        os.replace(tmp_model, path)
    return path


@contextlib.contextmanager
def _one_write(path: Path) -> Iterator[list[Path]]:
    """The temporary files of one write to ``path`` (the caller appends them): removed whatever
    happens; an OSError becomes one line naming ``path``."""
    tmp_files: list[Path] = []
    try:
        yield tmp_files
    except OSError as e:
        raise RistrettoError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for tmp in tmp_files:
            tmp.unlink(missing_ok=True)


def _folder_of(path: Path) -> Path:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise RistrettoError(f"cannot write {path}: folder {folder} does not exist")
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path("x.png") as tmp: writer(tmp)``: ``x.png`` appears only when complete.

    For writers that insist on a file name (matplotlib, onnx tools); the temporary file is in the
    destination folder, gets open()'s permissions and is removed on any error.
    """
    path = Path(path)
    folder = _folder_of(path)
    with _one_write(path) as tmp_files:
        tmp_files.append(_temp_path(folder, path.name))
        yield tmp_files[0]
        os.replace(tmp_files[0], path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a small text file (a JSON sidecar) with the same temp-then-rename rule."""
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` with the temp-then-rename rule (an .npz, a PNG ...)."""
    path = Path(path)
    folder = _folder_of(path)
    with _one_write(path) as tmp_files:
        os.replace(_write_temp(folder, path.name, payload, tmp_files), path)
    return path


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only a few µs)
    os.umask(mask)
    return mask


def _temp_path(folder: Path, name: str) -> Path:
    # keep the real suffix last: writers that pick a format from the name (matplotlib) still can
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp" + Path(name).suffix)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def _write_temp(folder: Path, name: str, payload: bytes, tmp_files: list[Path]) -> Path:
    tmp = _temp_path(folder, name)
    tmp_files.append(tmp)
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _is_repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 5; older ones only have ``label``
    return bool(flag) if flag is not None else fd.label == fd.LABEL_REPEATED


def _copy_fields(src: Message, dst: Message, skip: str) -> None:
    """Copy every set field of ``src`` into ``dst`` except the one named ``skip``."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if _is_repeated(fd):
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _externalized(model: ModelProto, data_path: Path, location: str) -> ModelProto:
    """A copy of ``model`` whose large initializers point into ``data_path`` (written here)."""
    light = ModelProto()
    _copy_fields(model, light, skip="graph")
    graph = light.graph
    _copy_fields(model.graph, graph, skip="initializer")
    offset = 0
    with open(data_path, "wb") as f:
        for t in model.graph.initializer:
            if is_external(t):  # left on disk by load_model: copied over in chunks
                offset += _pad(f, offset)
                length = copy_payload(t, f)
                _external_entry(graph.initializer.add(), t, location, offset, length)
                offset += length
                continue
            raw = t.raw_data if t.HasField("raw_data") else None
            size = len(raw) if raw is not None else t.ByteSize()
            if size < EXTERNAL_MIN_BYTES or t.data_type == TensorProto.STRING:
                graph.initializer.add().CopyFrom(t)
                continue
            if raw is None:
                raw = numpy_helper.to_array(t).tobytes()  # little-endian on every supported host
            offset += _pad(f, offset)
            f.write(raw)
            _external_entry(graph.initializer.add(), t, location, offset, len(raw))
            offset += len(raw)
        f.flush()
        os.fsync(f.fileno())
    return light


def _pad(f, offset: int) -> int:
    pad = (-offset) % _ALIGN
    f.write(b"\0" * pad)
    return pad


def _external_entry(ext: TensorProto, t: TensorProto, location: str, offset: int, length: int) -> None:
    ext.name = t.name
    ext.data_type = t.data_type
    ext.dims.extend(t.dims)
    if t.doc_string:
        ext.doc_string = t.doc_string
    ext.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = ext.external_data.add()
        entry.key, entry.value = key, value
