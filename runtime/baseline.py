"""The FP32 baseline of a (model, data) pair, computed once per run.

Every candidate of a search is compared with the same FP32 numbers: its accuracy, and its top-1
predictions (for ``fidelity``). Recomputing them per candidate would double the cost of a search,
so they are memoized on the model's content hash and the dataset's identity (source, items,
preprocessing). The memo lives for the process; it holds predictions (one int per image), not
outputs.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError

#: How many (model, data) baselines the process keeps.
MAX_ENTRIES = 16

_MEMO: OrderedDict[tuple, "Baseline"] = OrderedDict()
_PINNED: dict[int, object] = {}  # datasets whose id() is part of a memo key stay alive
_FILE_HASHES: dict[tuple, str] = {}


@dataclass(frozen=True)
class Baseline:
    """FP32 top-1 predictions of a (model, data) pair and, with labels, its accuracies."""

    predictions: np.ndarray = field(repr=False)
    n: int
    top1: float | None
    top5: float | None
    images_per_s: float

    def __str__(self) -> str:
        acc = "" if self.top1 is None else f" top1 {self.top1:.4f} top5 {self.top5:.4f}"
        return f"FP32 baseline on {self.n} images:{acc}"


def model_hash(model: ModelProto | str | os.PathLike) -> str:
    """Content hash of a model (file hashes are cached by path, size and mtime)."""
    if isinstance(model, ModelProto):
        return hashlib.sha1(model.SerializeToString()).hexdigest()
    path = Path(model)
    try:
        st = path.stat()
    except OSError:
        raise RistrettoError(f"model file not found: {path}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def dataset_key(dataset) -> tuple:
    """What makes two datasets the same data: source, item indices, preprocessing.

    In-memory arrays have no name that identifies them, so their object identity is part of the
    key (the memo keeps the dataset alive, so the identity cannot be reused meanwhile).
    """
    indices = getattr(dataset, "_indices", None)
    digest = hashlib.sha1(np.ascontiguousarray(indices).tobytes()).hexdigest() if indices is not None else ""
    name = getattr(dataset, "name", type(dataset).__name__)
    storage = getattr(dataset, "_images", None)
    identity = id(storage) if name in ("array", "batches") or storage is None else 0
    return (type(dataset).__name__, name, str(getattr(dataset, "preprocess", "")), len(dataset), digest,
            identity)


def recall(model: ModelProto | str | os.PathLike, dataset) -> tuple[tuple, Baseline | None]:
    """The memo key of (``model``, ``dataset``) and the baseline stored under it, if any.

    :func:`ristretto_onnx.runtime.evaluate.baseline` computes and stores missing ones.
    """
    key = (model_hash(model), dataset_key(dataset))
    hit = _MEMO.get(key)
    if hit is not None:
        _MEMO.move_to_end(key)
    return key, hit


def remember(key: tuple, entry: Baseline, dataset) -> None:
    _MEMO[key] = entry
    _PINNED[id(dataset)] = dataset
    while len(_MEMO) > MAX_ENTRIES:
        _MEMO.popitem(last=False)


def clear() -> None:
    """Forget every memoized baseline (tests; or after editing a model file in place)."""
    _MEMO.clear()
    _PINNED.clear()
    _FILE_HASHES.clear()
