"""Datasets and preprocessing: from files on disk to float32 batches in the model's layout.

Calibration (the passes), evaluation (the runtime) and the search all read data through
:func:`load_dataset`, so a dataset is described once and every stage sees the same numbers.

Two rules shape this module:

* **Raw data stays raw.** A dataset keeps its uint8 images (memory-mapped where the file allows
  it) or its file list, and preprocesses one batch at a time. Memory therefore grows with the
  batch, not with the dataset, and subsets/splits are just index arrays.
* **Preprocessing is exact and cheap.** For uint8 images the whole ``(v*scale - mean)/std``
  formula has only 256 possible results per channel, so it is computed once in float64, rounded
  once to float32, and applied as a table look-up. Every batch, subset and caller gets bit-identical
  inputs, and they are the correctly rounded values of the formula a model's README states.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import functools
import math
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ristretto_onnx.errors import RistrettoError

__all__ = [
    "DATA_OPTION_HELP",
    "Dataset",
    "Preprocess",
    "load_dataset",
    "parse_number",
    "preprocess_from_cli",
]

#: File name suffixes an image folder may hold (compared in lower case).
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif",
                            ".tiff", ".webp"})

#: Help texts for the CLI's data options, so every command words them the same way.
DATA_OPTION_HELP = {
    "scale": "Multiply raw pixel values by this first, e.g. 1/255 (a number or a fraction).",
    "mean": "Per-channel mean subtracted after scaling, comma-separated, e.g. 0.485,0.456,0.406.",
    "std": "Per-channel standard deviation divided by last, comma-separated.",
    "resize": "Image folders: resize the short side to this many pixels (bilinear).",
    "crop": "Image folders: center crop to this square size after resizing.",
    "add_channel_axis": "Grayscale data: turn (N,H,W) images into (N,1,H,W).",
}


# --------------------------------------------------------------------------------------------
# Numbers from text


def parse_number(text: str | float | int, option: str = "value") -> float:
    """A float from ``"0.5"``, ``"1e-3"`` or a fraction ``"1/255"``; one-line error otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip()
        try:
            if "/" in s:
                num, den = s.split("/")
                value = float(num) / float(den)
            else:
                value = float(s)
        except (ValueError, ZeroDivisionError):
            raise RistrettoError(
                f"{option}: {s!r} is not a number or a fraction like 1/255") from None
    if not math.isfinite(value):
        raise RistrettoError(f"{option}: {text!r} is not a finite number")
    return value


def _parse_numbers(text: str | Sequence[float], option: str) -> tuple[float, ...]:
    parts = text.split(",") if isinstance(text, str) else list(text)
    if not parts or any(str(p).strip() == "" for p in parts):
        raise RistrettoError(f"{option}: expected comma-separated numbers, got {text!r}")
    return tuple(parse_number(p, option) for p in parts)


def _format_number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _format_scale(value: float) -> str:
    """``1/255`` rather than ``0.00392156862745098`` when the scale is exactly 1/k."""
    if 0 < value < 1:
        k = round(1 / value)
        if k > 1 and 1 / k == value:
            return f"1/{k}"
    return _format_number(value)


# --------------------------------------------------------------------------------------------
# Preprocess


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model inputs: ``(img*scale - mean)/std``, then NHWC -> NCHW.

    The order follows the usual training recipes (torchvision, the ONNX model zoo): geometry first
    (``resize`` the short side, center ``crop``; image folders and uint8 arrays only), then the
    per-channel affine map. ``None`` fields do nothing, so ``Preprocess()`` only converts uint8
    NHWC images to float32 NCHW. Data that is already float is taken to be in the model's layout
    (NCHW); only the affine map applies to it.

    The string form (``str(p)``) is compact and round-trips through :meth:`parse`, e.g.
    ``scale=1/255;mean=0.485,0.456,0.406;std=0.229,0.224,0.225``.
    """

    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    crop: int | None = None
    add_channel_axis: bool = False

    def __post_init__(self) -> None:
        if self.scale is not None:
            scale = parse_number(self.scale, "scale")
            if scale == 0:
                raise RistrettoError("scale: must not be 0")
            object.__setattr__(self, "scale", scale)
        for field in ("mean", "std"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, _parse_numbers(value, field))
        if self.std is not None and any(s == 0 for s in self.std):
            raise RistrettoError(f"std: must not contain 0, got {self.std}")
        if self.mean is not None and self.std is not None:
            lengths = {len(self.mean), len(self.std)}
            if len(lengths) > 1 and 1 not in lengths:
                raise RistrettoError(f"mean has {len(self.mean)} values but std has "
                                     f"{len(self.std)}; give one per channel (or a single value)")
        for field in ("resize", "crop"):
            value = getattr(self, field)
            if value is not None:
                if isinstance(value, bool) or not float(value).is_integer() or int(value) < 1:
                    raise RistrettoError(f"{field}: expected a positive whole number of pixels, "
                                         f"got {value!r}")
                object.__setattr__(self, field, int(value))
        object.__setattr__(self, "add_channel_axis", bool(self.add_channel_axis))

    # ---- string form

    def __str__(self) -> str:
        parts = []
        if self.scale is not None:
            parts.append(f"scale={_format_scale(self.scale)}")
        for field in ("mean", "std"):
            value = getattr(self, field)
            if value is not None:
                parts.append(f"{field}=" + ",".join(_format_number(v) for v in value))
        for field in ("resize", "crop"):
            value = getattr(self, field)
            if value is not None:
                parts.append(f"{field}={value}")
        if self.add_channel_axis:
            parts.append("add_channel_axis")
        return ";".join(parts) if parts else "none"

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """Inverse of ``str()``: ``key=value`` items separated by ``;`` or spaces."""
        text = text.strip()
        if text in ("", "none"):
            return cls()
        fields: dict[str, Any] = {}
        for item in text.replace(";", " ").split():
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key == "add_channel_axis" and (not sep or value.lower() in ("1", "true", "yes")):
                fields[key] = True
            elif key == "add_channel_axis" and value.lower() in ("0", "false", "no"):
                fields[key] = False
            elif key in ("scale", "mean", "std", "resize", "crop") and sep:
                fields[key] = value
            else:
                raise RistrettoError(f"preprocess: cannot read {item!r} in {text!r} (expected "
                                     "scale=, mean=, std=, resize=, crop= or add_channel_axis)")
        return preprocess_from_cli(**fields)

    # ---- checks

    @property
    def channels(self) -> int | None:
        """Number of channels the per-channel values imply (``None``: any)."""
        counts = [len(v) for v in (self.mean, self.std) if v is not None and len(v) > 1]
        return max(counts) if counts else None

    def check_channels(self, channels: int, what: str = "the data") -> None:
        """Raise if ``mean``/``std`` were given for a different number of channels."""
        for field in ("mean", "std"):
            value = getattr(self, field)
            if value is not None and len(value) not in (1, channels):
                raise RistrettoError(
                    f"{field} has {len(value)} values but {what} has {channels} "
                    f"channel{'s' if channels != 1 else ''}")

    # ---- application

    def table(self, channels: int) -> np.ndarray:
        """(channels, 256) float32: the preprocessed value of every uint8 level, per channel."""
        self.check_channels(channels)
        return _lookup_table(self, channels)

    def geometry(self, image: Any) -> Any:
        """Resize the short side, then center crop, a PIL image (the ImageNet recipe).

        The long side becomes ``int(resize * long / short)`` (torchvision's rule); the crop sits at
        offset ``((w - crop) // 2, (h - crop) // 2)``. An image already at the target size is left
        untouched, so re-encoded datasets (short side already 256) see no resampling at all.
        """
        from PIL import Image

        if self.resize is not None:
            w, h = image.size
            short, long = min(w, h), max(w, h)
            if short != self.resize:
                new_long = int(self.resize * long / short)
                size = (self.resize, new_long) if w <= h else (new_long, self.resize)
                image = image.resize(size, Image.Resampling.BILINEAR)
        if self.crop is not None:
            w, h = image.size
            c = self.crop
            if c > w or c > h:
                raise RistrettoError(f"crop {c} is larger than an image of {w}x{h} pixels; set a "
                                     "resize at least as large as the crop")
            if (w, h) != (c, c):
                left, top = (w - c) // 2, (h - c) // 2
                image = image.crop((left, top, left + c, top + c))
        return image

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Preprocess a batch: uint8 NHW/NHWC images, or float data already in NCHW layout."""
        images = np.asarray(images)
        if images.dtype == np.uint8:
            if self.resize is not None or self.crop is not None:
                images = self._geometry_array(images)
            return self._normalize_uint8(images)
        if images.dtype.kind == "f":
            return self._normalize_float(images)
        raise RistrettoError(f"images must be uint8 (raw pixels) or float (already preprocessed), "
                             f"got {images.dtype}")

    def _geometry_array(self, images: np.ndarray) -> np.ndarray:
        """Resize/crop a uint8 array image by image, only when that changes anything."""
        from PIL import Image

        if images.ndim not in (3, 4):
            raise RistrettoError(f"images must be (N,H,W) or (N,H,W,C), got shape {images.shape}")
        h, w = images.shape[1:3]
        needs_resize = self.resize is not None and min(h, w) != self.resize
        needs_crop = self.crop is not None and (h, w) != (self.crop, self.crop)
        if not (needs_resize or needs_crop):
            return images
        gray4 = images.ndim == 4 and images.shape[3] == 1  # PIL wants (H,W) for one channel
        out = []
        for img in images:
            pixels = np.asarray(self.geometry(Image.fromarray(img[..., 0] if gray4 else img)))
            out.append(pixels[..., None] if gray4 else pixels)
        return np.stack(out)

    def _normalize_uint8(self, images: np.ndarray) -> np.ndarray:
        if images.ndim == 3:
            out = self.table(1)[0][images]
            return out[:, None] if self.add_channel_axis else out
        if images.ndim == 4:
            n, h, w, c = images.shape
            if self.add_channel_axis and c != 1:
                raise RistrettoError(f"add_channel_axis expects (N,H,W) grayscale images, "
                                     f"got shape {images.shape}")
            table = self.table(c)
            out = np.empty((n, c, h, w), dtype=np.float32)
            for ch in range(c):
                out[:, ch] = table[ch][images[..., ch]]
            return out
        raise RistrettoError(f"uint8 images must be (N,H,W) or (N,H,W,C), got shape {images.shape}")

    def _normalize_float(self, x: np.ndarray) -> np.ndarray:
        if self.resize is not None or self.crop is not None:
            raise RistrettoError("resize/crop need raw uint8 images or an image folder; this data "
                                 "is float, taken to be preprocessed already")
        if x.ndim == 3 and self.add_channel_axis:
            x = x[:, None]
        if self.scale is None and self.mean is None and self.std is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim < 2:
            raise RistrettoError(f"float data must be (N,C,...) to apply mean/std, got {x.shape}")
        self.check_channels(x.shape[1])
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = x.astype(np.float64)
        if self.scale is not None:
            y *= self.scale
        if self.mean is not None:
            y -= np.asarray(self.mean).reshape(shape)
        if self.std is not None:
            y /= np.asarray(self.std).reshape(shape)
        return y.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _lookup_table(pre: Preprocess, channels: int) -> np.ndarray:
    levels = np.arange(256, dtype=np.float64)
    if pre.scale is not None:
        # Divide by k when the scale is 1/k: x/255 is what model READMEs write, and it is exact.
        k = round(1 / pre.scale)
        levels = levels / k if k > 1 and 1 / k == pre.scale else levels * pre.scale
    table = np.repeat(levels[None], channels, axis=0)
    if pre.mean is not None:
        table -= np.asarray(pre.mean)[:, None]  # (C,1) or (1,1): one value per channel or shared
    if pre.std is not None:
        table /= np.asarray(pre.std)[:, None]
    table = table.astype(np.float32)
    table.flags.writeable = False
    return table


def preprocess_from_cli(*, scale: str | float | None = None, mean: str | Sequence[float] | None = None,
                        std: str | Sequence[float] | None = None, resize: str | int | None = None,
                        crop: str | int | None = None, add_channel_axis: bool | None = None,
                        base: Preprocess | None = None) -> Preprocess:
    """Build a :class:`Preprocess` from command-line strings, on top of ``base``.

    Options left ``None`` keep ``base``'s value (e.g. a zoo model's preprocessing), the text
    ``none`` clears one. Numbers may be fractions (``--scale 1/255``); lists are comma-separated.
    Every mistake is a one-line :class:`RistrettoError` naming the option.
    """
    changes: dict[str, Any] = {}
    given = {"scale": scale, "mean": mean, "std": std, "resize": resize, "crop": crop}
    for name, value in given.items():
        if value is None:
            continue
        option = f"--{name}"
        if isinstance(value, str) and value.strip().lower() == "none":
            changes[name] = None
        elif name == "scale":
            changes[name] = parse_number(value, option)
            if changes[name] == 0:
                raise RistrettoError(f"{option}: must not be 0")
        elif name in ("mean", "std"):
            changes[name] = _parse_numbers(value, option)
            if name == "std" and any(v == 0 for v in changes[name]):
                raise RistrettoError(f"{option}: must not contain 0, got {value!r}")
        else:
            number = parse_number(value, option)
            if not number.is_integer() or number < 1:
                raise RistrettoError(f"{option}: expected a positive whole number of pixels, "
                                     f"got {value!r}")
            changes[name] = int(number)
    if add_channel_axis is not None:
        changes["add_channel_axis"] = bool(add_channel_axis)
    return dataclasses.replace(base if base is not None else Preprocess(), **changes)


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
            yield self._read(idx), (None if labels is None else labels[idx])

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
    """

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
            if images is None:
                images = npz["images"]
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise RistrettoError(f"cannot read {path}: {e}") from None
    if labels is None:
        labels = file_labels
    return ArrayDataset(images, labels, preprocess, str(path))


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
    if isinstance(source, str) and source.startswith("zoo:"):
        from ristretto_onnx import zoo

        dataset = zoo.open_dataset(source[4:], preprocess=preprocess)
        return dataset.with_labels(labels) if labels is not None else dataset
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source).expanduser(), preprocess, labels)
    if isinstance(source, np.ndarray):
        return ArrayDataset(source, labels, preprocess, "array")
    if isinstance(source, Iterable):
        return _from_batches(source, preprocess, labels)
    raise RistrettoError(f"cannot load a dataset from {type(source).__name__}: give a path, "
                         "zoo:NAME, a numpy array or (x, y) batches")
