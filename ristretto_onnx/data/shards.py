"""Shards a worker reads itself: where the images are, which of them, and how to preprocess them.

A search scores every plan on the same validation images (thesis 9.2), so a cluster backend
keeps them on its workers (:mod:`ristretto_onnx.runtime.cluster`). At ImageNet size (50,000
images, 30 GB as float32 model inputs) the images must not pass through the driver: each worker
opens the data source itself and reads and preprocesses only its own batches. A
:class:`ShardSource` is the few bytes that make this possible: the file (or the shard's image
files), the preprocessing recorded in the dataset, and the storage indices of each batch.

Reading a batch here runs the same code the driver runs (:meth:`Dataset.batches` on the same
indices with the same :class:`~ristretto_onnx.data.preprocess.Preprocess`), so a worker's
inputs are bit-identical to the local backend's. Sources:

* ``.npy`` files and uncompressed ``.npz`` members: memory-mapped by every worker (only the
  worker's rows are paged in);
* compressed ``.npz`` files (the zoo's): loaded by every worker (small data sets only);
* image folders: the shard's own files, decoded by the worker.

Data the driver holds only in memory (arrays or batches given to the Python API) has no source:
:func:`shard_source` returns ``None`` and the caller ships the preprocessed arrays instead.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ristretto_onnx.data.datasets import ArrayDataset, Dataset, FolderDataset
from ristretto_onnx.data.preprocess import Preprocess
from ristretto_onnx.errors import RistrettoError


@dataclass(frozen=True)
class ShardSource:
    """How to read some batches of a dataset from its files (see the module docstring).

    ``kind``: ``memmap`` (a raw array at ``offset`` in ``path``), ``npz`` (the ``images`` member
    of a compressed ``.npz``) or ``folder`` (``files``, addressed by position). ``batches`` maps
    a batch number to the storage indices of its images, in the dataset's order.
    """

    kind: str
    path: str
    preprocess: Preprocess
    batches: Mapping[int, np.ndarray]
    name: str = "shard"
    dtype: str = ""
    shape: tuple[int, ...] = ()
    offset: int = 0
    order: str = "C"
    files: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()

    def open(self) -> Dataset:
        """The dataset over the source's storage (no labels: the driver keeps them)."""
        if self.kind == "folder":
            return FolderDataset(Path(self.path), [Path(f) for f in self.files], None, self.classes,
                                 self.preprocess, self.name)
        if self.kind == "memmap":
            try:
                images = np.memmap(self.path, dtype=np.dtype(self.dtype), mode="r", offset=self.offset,
                                   shape=self.shape, order=self.order)
            except (OSError, ValueError) as e:
                raise RistrettoError(f"a worker cannot read {self.path}: {e}") from None
        elif self.kind == "npz":
            try:
                with np.load(self.path, allow_pickle=False) as npz:
                    images = npz["images"]
            except (OSError, KeyError, ValueError) as e:
                raise RistrettoError(f"a worker cannot read {self.path}: {e}") from None
        else:
            raise RistrettoError(f"unknown shard source {self.kind!r}")
        if images.shape != tuple(self.shape) or images.dtype != np.dtype(self.dtype):
            raise RistrettoError(f"{self.path} changed under the run: a worker finds {images.shape} "
                                 f"{images.dtype}, the driver read {tuple(self.shape)} {self.dtype}")
        return ArrayDataset(images, None, self.preprocess, self.name)

    def read(self) -> dict[int, np.ndarray]:
        """The preprocessed float32 inputs of every batch of the shard, by batch number."""
        return read_batches(self.open(), self.batches)


def read_batches(dataset: Dataset, batches: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The inputs of ``batches`` (number -> storage indices) exactly as :meth:`Dataset.batches` reads them."""
    return {k: next(dataset._with_indices(np.asarray(idx, np.int64)).batches(max(1, len(idx))))[0]
            for k, idx in batches.items()}


def batch_indices(dataset: Dataset, batch_size: int) -> list[np.ndarray]:
    """Storage indices of each batch :meth:`Dataset.batches` yields, in order."""
    idx = dataset._indices
    return [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]


def shard_source(dataset: Dataset, batches: Mapping[int, np.ndarray]) -> ShardSource | None:
    """A source a worker reads ``batches`` from by itself; ``None`` for in-memory data."""
    pre, name = dataset.preprocess, dataset.name
    if isinstance(dataset, FolderDataset):
        used = np.unique(np.concatenate([np.asarray(v, np.int64) for v in batches.values()]))
        where = {int(i): p for p, i in enumerate(used)}
        files = tuple(str(dataset._files[i]) for i in used)
        local = {k: np.array([where[int(i)] for i in v], np.int64) for k, v in batches.items()}
        return ShardSource("folder", str(dataset.root), pre, local, name, files=files, classes=dataset.classes)
    if not isinstance(dataset, ArrayDataset):
        return None
    images = dataset.images
    meta = dict(dtype=images.dtype.str, shape=tuple(images.shape))
    if isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap) and images.filename:
        order = "F" if images.flags.f_contiguous and not images.flags.c_contiguous else "C"
        return ShardSource("memmap", images.filename, pre, dict(batches), name, offset=int(images.offset),
                           order=order, **meta)
    if dataset.origin is not None:  # a compressed .npz the driver loaded into memory
        return ShardSource("npz", dataset.origin, pre, dict(batches), name, **meta)
    return None
