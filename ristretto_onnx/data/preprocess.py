"""Preprocessing: how raw pixels become model inputs, exactly and cheaply.

For uint8 images the whole ``(v*scale - mean)/std`` formula has only 256 possible results per
channel, so it is computed once in float64, rounded once to float32, and applied as a table
look-up: every batch, subset and caller gets bit-identical inputs, the correctly rounded values
of the formula a model's README states. Geometry (resize the short side, center crop) comes
first, as in the usual training recipes. The thesis (section 4.3, 9.2) calibrates and scores on
the data the network was trained on; getting this step wrong silently changes every number.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ristretto_onnx.errors import RistrettoError

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
    channels_last: bool = False  # float data given as (N,H,W,C): transposed to the model's NCHW

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
        object.__setattr__(self, "channels_last", bool(self.channels_last))

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
        for flag in ("add_channel_axis", "channels_last"):
            if getattr(self, flag):
                parts.append(flag)
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
            if key in ("add_channel_axis", "channels_last") and (not sep or value.lower() in ("1", "true", "yes")):
                fields[key] = True
            elif key in ("add_channel_axis", "channels_last") and value.lower() in ("0", "false", "no"):
                fields[key] = False
            elif key in ("scale", "mean", "std", "resize", "crop") and sep:
                fields[key] = value
            else:
                raise RistrettoError(f"preprocess: cannot read {item!r} in {text!r} (expected "
                                     "scale=, mean=, std=, resize=, crop=, add_channel_axis or channels_last)")
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
        if x.ndim == 4 and self.channels_last:
            x = x.transpose(0, 3, 1, 2)
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
                        channels_last: bool | None = None, base: Preprocess | None = None) -> Preprocess:
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
    if channels_last is not None:
        changes["channels_last"] = bool(channels_last)
    return dataclasses.replace(base if base is not None else Preprocess(), **changes)
