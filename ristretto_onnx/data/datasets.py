"""Datasets: sized, re-iterable, labelled collections read one batch at a time.

Raw data stays raw: a dataset keeps its uint8 images (memory-mapped where the file allows it) or
its file list, and preprocesses one batch at a time, so memory grows with the batch, not with the
dataset, and subsets/splits are just index arrays.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ristretto_onnx.data.preprocess import Preprocess
from ristretto_onnx.errors import RistrettoError

# --------------------------------------------------------------------------------------------
# Datasets


class Dataset(abc.ABC):
    """A sized, re-iterable, labelled collection of model inputs.

    Items are addressed by index into the underlying storage, so :meth:`subset`, :meth:`split`
    and :meth:`take` cost an index array and never copy or preprocess data. Batches are
    preprocessed when they are read (see :meth:`batches`).
    """

    def __init__(self, size: int, labels: np.ndarray | None, preprocess: Preprocess | None,
                 name: str) -> None:
        self._size = size
        self._indices = np.arange(size, dtype=np.int64)
        self._all_labels = labels
        self._preprocess = preprocess if preprocess is not None else Preprocess()
        self.name = name

    # ---- the interface

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} n={len(self)} preprocess={self._preprocess}>"

    @property
    def labels(self) -> np.ndarray | None:
        """int64 labels of the items in order, or ``None`` for unlabelled data."""
        return None if self._all_labels is None else self._all_labels[self._indices]

    @property
    def preprocess(self) -> Preprocess:
        return self._preprocess

    @property
    def num_classes(self) -> int | None:
        """Number of classes when known (class folders), else ``1 + max(label)``."""
        labels = self._all_labels
        return None if labels is None or len(labels) == 0 else int(labels.max()) + 1

    @functools.cached_property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one preprocessed item, e.g. ``(3, 32, 32)`` (reads one item)."""
        if len(self) == 0:
            raise RistrettoError(f"dataset {self.name} is empty")
        return tuple(self._read(self._indices[:1]).shape[1:])

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(x, y)``: x float32 in the model's layout, y int64 labels or ``None``.

        Only one batch is read and preprocessed at a time; the last batch may be smaller.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise RistrettoError(f"batch size must be a positive integer, got {batch_size!r}")
        labels = self._all_labels
        for start in range(0, len(self._indices), int(batch_size)):
            idx = self._indices[start:start + int(batch_size)]
            x = self._read(idx)
            if not np.isfinite(x).all():  # float input data; uint8 tables are always finite
                bad = int(np.count_nonzero(~np.isfinite(x)))
                raise RistrettoError(f"{self.name}: items {start} to {start + len(idx) - 1} contain "
                                     f"{bad} NaN or Inf values after preprocessing")
            yield x, (None if labels is None else labels[idx])

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """A seeded random subset of ``n`` items (kept in dataset order, for locality)."""
        return self.split(n, seed)[0]

    def split(self, n: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Disjoint ``(first n of a seeded permutation, the rest)``, each kept in dataset order.

        ``subset(n, seed)`` is the first part, so a calibration subset and its held-out
        complement come from one call.
        """
        n = self._check_count(n, "split")
        perm = np.random.default_rng(seed).permutation(len(self._indices))
        first = np.sort(self._indices[perm[:n]])
        rest = np.sort(self._indices[perm[n:]])
        return self._with_indices(first), self._with_indices(rest)

    def take(self, n: int) -> Dataset:
        """The first ``n`` items in order (all of them if there are fewer)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise RistrettoError(f"take: expected a non-negative count, got {n!r}")
        return self._with_indices(self._indices[:int(n)])

    def with_preprocess(self, preprocess: Preprocess) -> Dataset:
        """The same items with another preprocessing (checked against the data's channels)."""
        other = copy.copy(self)
        other._preprocess = preprocess
        other.__dict__.pop("sample_shape", None)
        other._check_preprocess()
        return other

    #: Added to the stored labels (model class = dataset label + offset); written models record it.
    label_offset: int = 0

    def with_label_offset(self, offset: int) -> Dataset:
        """The same items with ``offset`` added to every label, remembered in ``label_offset``."""
        other = copy.copy(self)
        other.label_offset = int(self.label_offset) + int(offset)
        if self._all_labels is not None and offset:
            other._all_labels = self._all_labels + np.int64(offset)
        return other

    def with_labels(self, labels: Any) -> Dataset:
        """The same items with these labels (one per item, in this dataset's order)."""
        labels = _check_labels(labels, len(self), self.name)
        other = copy.copy(self)
        other._all_labels = np.full(self._size, -1, dtype=np.int64)
        other._all_labels[self._indices] = labels
        return other

    # ---- for subclasses

    @abc.abstractmethod
    def _read(self, idx: np.ndarray) -> np.ndarray:
        """Preprocessed float32 inputs for the storage indices ``idx`` (sorted or not)."""

    def _check_preprocess(self) -> None:
        """Raise early when the preprocessing cannot fit the data (wrong channel count...)."""

    def _with_indices(self, indices: np.ndarray) -> Dataset:
        other = copy.copy(self)
        other._indices = indices
        return other

    def _check_count(self, n: int, what: str) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= len(self):
            raise RistrettoError(f"{what}: asked for {n!r} items but {self.name} has {len(self)}")
        return int(n)


def _check_labels(labels: Any, count: int, where: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != count:
        raise RistrettoError(f"{where}: labels have shape {labels.shape}, expected ({count},)")
    if labels.dtype.kind not in "iu":
        raise RistrettoError(f"{where}: labels must be integers, got {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def _stack(images: list[np.ndarray], where: str) -> np.ndarray:
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise RistrettoError(f"images in {where} have different sizes ({a} and {b}); set a crop "
                             "(e.g. --resize 256 --crop 224) so they can be batched")
    return np.stack(images)


class ArrayDataset(Dataset):
    """Images held as one array: uint8 NHW/NHWC raw pixels, or float in the model's layout.

    The array may be a read-only memory map; batches index it, so only the rows read are paged in.
    ``origin``: the compressed ``.npz`` the array was loaded from, if any (workers of a cluster
    load it themselves, :mod:`ristretto_onnx.data.shards`).
    """

    origin: str | None = None

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None,
                 preprocess: Preprocess | None = None, name: str = "array") -> None:
        if images.ndim < 2:
            raise RistrettoError(f"{name}: images must have a batch axis, got shape {images.shape}")
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise RistrettoError(f"{name}: images must be uint8 (raw pixels) or float "
                                 f"(preprocessed), got {images.dtype}")
        super().__init__(images.shape[0], _check_labels(labels, images.shape[0], name),
                         preprocess, name)
        self._images = images
        self._check_preprocess()

    @property
    def images(self) -> np.ndarray:
        """The raw storage (all items, not only this subset's)."""
        return self._images

    def _check_preprocess(self) -> None:
        shape, pre = self._images.shape, self._preprocess
        if self._images.dtype == np.uint8:
            channels = shape[3] if len(shape) == 4 else 1
        elif len(shape) == 3 and pre.add_channel_axis:
            channels = 1
        elif len(shape) == 4 and pre.channels_last:
            channels = shape[3]
        else:
            channels = shape[1] if len(shape) >= 3 else 1
        pre.check_channels(channels, f"{self.name} (shape {shape})")

    def _read(self, idx: np.ndarray) -> np.ndarray:
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
            raw = self._images[idx[0]:idx[-1] + 1]  # contiguous: a slice, no fancy-index copy
        else:
            raw = self._images[idx]
        return self._preprocess.apply(raw)


class FolderDataset(Dataset):
    """Images decoded from files, one batch at a time (ImageNet folder layout).

    Class index = position of the class subfolder in sorted order, as in ILSVRC tooling. Images
    are decoded with Pillow to RGB (to grayscale when the preprocessing adds a channel axis), then
    resized/cropped per :meth:`Preprocess.geometry`.
    """

    def __init__(self, root: Path, files: list[Path], labels: np.ndarray | None,
                 classes: tuple[str, ...], preprocess: Preprocess | None, name: str) -> None:
        super().__init__(len(files), labels, preprocess, name)
        self.root = root
        self.classes = classes
        self._files = files
        self._check_preprocess()

    @property
    def files(self) -> list[Path]:
        """The image files of this dataset, in order."""
        return [self._files[i] for i in self._indices]

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes else None

    def _check_preprocess(self) -> None:
        self._preprocess.check_channels(1 if self._preprocess.add_channel_axis else 3, self.name)

    def decode(self, idx: np.ndarray) -> np.ndarray:
        """uint8 pixels (N,H,W,3) or (N,H,W) after resize/crop, before normalization."""
        from PIL import Image, UnidentifiedImageError

        mode = "L" if self._preprocess.add_channel_axis else "RGB"
        images = []
        for i in idx:
            path = self._files[i]
            try:
                with Image.open(path) as img:
                    images.append(np.asarray(self._preprocess.geometry(img.convert(mode))))
            except (OSError, UnidentifiedImageError) as e:
                raise RistrettoError(f"cannot decode image {path}: {e}") from None
        return _stack(images, str(self.root))

    def _read(self, idx: np.ndarray) -> np.ndarray:
        pixels = self.decode(idx)
        pre = dataclasses.replace(self._preprocess, resize=None, crop=None)
        return pre.apply(pixels)
