"""Loaders: a :class:`Dataset` from whatever the user has (a path, ``zoo:NAME``, arrays, batches).

Calibration (the passes), evaluation (the runtime) and the search all read data through
:func:`load_dataset`, so a dataset is described once and every stage sees the same numbers.

Named sources (``zoo:NAME``) are opened by the package that owns the names: the zoo registers
its opener here (:func:`register_named_source`) when it is imported, which the package root does,
so the data layer never imports the zoo (the zoo is built on the data layer, not the reverse).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ristretto_onnx.data.datasets import ArrayDataset, Dataset, FolderDataset, _check_labels
from ristretto_onnx.data.preprocess import IMAGE_SUFFIXES, Preprocess
from ristretto_onnx.errors import RistrettoError

#: ``PREFIX`` -> opener(name, preprocess) for sources written ``PREFIX:NAME``.
_NAMED_SOURCES: dict[str, Callable[[str, Preprocess | None], Dataset]] = {}


def register_named_source(prefix: str, opener: Callable[[str, Preprocess | None], Dataset]) -> None:
    """Let :func:`load_dataset` open ``PREFIX:NAME`` with ``opener(NAME, preprocess)``."""
    _NAMED_SOURCES[prefix] = opener

def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _load_folder(root: Path, preprocess: Preprocess | None, labels: Any) -> FolderDataset:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        files, file_labels = [], []
        for index, sub in enumerate(subdirs):
            for path in sorted(p for p in sub.iterdir() if p.is_file() and _is_image(p)):
                files.append(path)
                file_labels.append(index)
        classes = tuple(p.name for p in subdirs)
        found = np.asarray(file_labels, dtype=np.int64)
    else:  # a flat folder of images: unlabelled
        files = sorted(p for p in root.iterdir() if p.is_file() and _is_image(p))
        classes, found = (), None
    if not files:
        raise RistrettoError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root} "
                             "or its class subfolders")
    if labels is not None:
        found = _check_labels(labels, len(files), str(root))
    return FolderDataset(root, files, found, classes, preprocess, str(root))


def _npz_member_memmap(path: Path, member: str) -> np.ndarray | None:
    """Memory-map an uncompressed .npz member; ``None`` if it is compressed (then np.load)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = int.from_bytes(local[26:28], "little"), \
                int.from_bytes(local[28:30], "little")
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = header(f)
            if dtype.hasobject:
                return None
            return np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                             order="F" if fortran else "C")


def _load_npz(path: Path, preprocess: Preprocess | None, labels: Any) -> ArrayDataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if "images" not in names:
                raise RistrettoError(f"{path} has no 'images' array (it has: "
                                     f"{', '.join(names) or 'nothing'})")
            file_labels = npz["labels"] if "labels" in names else None
            images = _npz_member_memmap(path, "images.npy")
            origin = None if images is not None else str(path.resolve())
            if images is None:
                images = npz["images"]
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise RistrettoError(f"cannot read {path}: {e}") from None
    if labels is None:
        labels = file_labels
    dataset = ArrayDataset(images, labels, preprocess, str(path))
    dataset.origin = origin  # compressed: a cluster's workers load the file themselves
    return dataset


def _load_path(path: Path, preprocess: Preprocess | None, labels: Any) -> Dataset:
    if not path.exists():
        raise RistrettoError(f"dataset not found: {path}")
    if path.is_dir():
        return _load_folder(path, preprocess, labels)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path, preprocess, labels)
    if suffix == ".npy":
        try:
            images = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RistrettoError(f"cannot read {path}: {e}") from None
        return ArrayDataset(images, labels, preprocess, str(path))
    raise RistrettoError(f"unsupported dataset {path}: expected an .npz (images, labels), an "
                         ".npy, an image folder or zoo:NAME")


def _from_batches(batches: Iterable[Any], preprocess: Preprocess | None, labels: Any) -> Dataset:
    """Materialize an iterable of (x, y) batches: a Dataset must be sized and re-iterable."""
    xs, ys = [], []
    for item in batches:
        if isinstance(item, tuple) and len(item) == 2:
            x, y = item
        else:
            x, y = item, None
        xs.append(np.asarray(x))
        ys.append(None if y is None else np.asarray(y).reshape(-1))
    if not xs:
        raise RistrettoError("the batch iterable yielded no data")
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise RistrettoError(f"batches have different item shapes: {sorted(shapes)}")
    images = np.concatenate(xs)
    if labels is None and all(y is not None for y in ys):
        labels = np.concatenate(ys)
    return ArrayDataset(images, labels, preprocess, "batches")


def load_dataset(source: Any, preprocess: Preprocess | None = None, *,
                 labels: Any = None) -> Dataset:
    """Open a dataset from whatever the user has.

    ``source`` is one of: ``"zoo:NAME"`` (a zoo dataset, or a zoo model's test set, with its
    preprocessing); a path to an ``.npz`` (``images`` uint8 NHWC/NHW or float in model layout,
    optional ``labels``), an ``.npy`` or an image folder (class subfolders); a numpy array;
    an iterable of ``(x, y)`` batches; or a :class:`Dataset`. ``preprocess`` overrides the
    source's own (zoo) preprocessing; ``labels`` supplies or replaces the labels.
    """
    if isinstance(source, Dataset):
        dataset = source.with_preprocess(preprocess) if preprocess is not None else source
        return dataset.with_labels(labels) if labels is not None else dataset
    prefix, colon, name = source.partition(":") if isinstance(source, str) else ("", "", "")
    if colon and prefix in _NAMED_SOURCES:
        dataset = _NAMED_SOURCES[prefix](name, preprocess)
        return dataset.with_labels(labels) if labels is not None else dataset
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source).expanduser(), preprocess, labels)
    if isinstance(source, np.ndarray):
        return ArrayDataset(source, labels, preprocess, "array")
    if isinstance(source, Iterable):
        return _from_batches(source, preprocess, labels)
    raise RistrettoError(f"cannot load a dataset from {type(source).__name__}: give a path, "
                         "zoo:NAME, a numpy array or (x, y) batches")
