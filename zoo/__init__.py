"""The model zoo: pretrained FP32 models and real datasets, by name.

Entries (:mod:`ristretto_onnx.zoo.catalog`) are facts; the files live outside the repository and
are found on a search path (:mod:`ristretto_onnx.zoo.store`): ``RISTRETTO_ZOO``, then the user
cache. One model ships inside the package, ``digits-cnn`` (:mod:`ristretto_onnx.zoo.digits`), so
the main command runs with no data download at all.

Usage::

    from ristretto_onnx import zoo
    zoo.get("lenet-mnist").fp32_top1_measured        # 0.9901, onnxruntime on the MNIST test set
    zoo.resolve_model("zoo:lenet-mnist")             # Path to the sha256-verified .onnx
    zoo.model_dataset("lenet-mnist", split="calib")  # MNIST train with LeNet's preprocessing
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from ristretto_onnx.data import Dataset, Preprocess
from ristretto_onnx.data.loaders import register_named_source
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.zoo.catalog import ENTRIES
from ristretto_onnx.zoo.entries import DatasetEntry, ModelEntry
from ristretto_onnx.zoo.store import ZooFile, cache_dir, search_path

__all__ = [
    "DatasetEntry", "ModelEntry", "ZooFile", "cache_dir", "default_model", "get", "get_model",
    "list_entries",
    "model_dataset", "open_dataset", "resolve_model", "search_path",
]

Entry = DatasetEntry | ModelEntry

_BY_NAME: dict[str, Entry] = {}
for _entry in ENTRIES:
    for _key in (_entry.name, *_entry.aliases):
        assert _key not in _BY_NAME, f"duplicate zoo name {_key}"
        _BY_NAME[_key] = _entry

#: Name of the embedded model the README's main command runs on.
DEFAULT_MODEL = "digits-cnn"

_SPLITS = {"test": "dataset", "calib": "calib_dataset", "train": "calib_dataset"}


def _strip(name: str) -> str:
    name = str(name).strip()
    return name[4:] if name.startswith("zoo:") else name


def get(name: str) -> Entry:
    """The entry called ``name`` (``zoo:`` prefix and case optional); one-line error if unknown."""
    key = _strip(name).lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    close = difflib.get_close_matches(key, list(_BY_NAME), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else \
        f"; known: {', '.join(e.name for e in ENTRIES)}"
    raise RistrettoError(f"unknown zoo entry {name!r}{hint} (see 'ristretto-onnx zoo list')")


def list_entries(kind: str | None = None) -> list[Entry]:
    """All entries in registration order, optionally only ``"model"`` or ``"dataset"`` ones."""
    if kind not in (None, "model", "dataset"):
        raise RistrettoError(f"unknown zoo entry kind {kind!r}: use model or dataset")
    return [e for e in ENTRIES if kind is None or e.kind == kind]


def get_model(name: str) -> ModelEntry:
    """Like :func:`get`, but the entry must be a model."""
    entry = get(name)
    if not isinstance(entry, ModelEntry):
        raise RistrettoError(f"zoo entry {entry.name} is a dataset, not a model")
    return entry


def default_model() -> ModelEntry:
    """The embedded digits CNN: always available, no network or shared zoo needed."""
    return get_model(DEFAULT_MODEL)


def resolve_model(spec: str | os.PathLike) -> Path:
    """Path of a model given as ``zoo:NAME``, a path to an .onnx file, or a bare zoo name.

    Zoo models are sha256-checked. A path wins over a zoo name of the same spelling.
    """
    text = str(spec)
    if text.startswith("zoo:"):
        return get_model(text).locate()
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if _strip(text).lower() in _BY_NAME and isinstance(_BY_NAME[_strip(text).lower()], ModelEntry):
        return get_model(text).locate()
    if path.exists():
        raise RistrettoError(f"model {path} is a folder, not an .onnx file")
    raise RistrettoError(f"model not found: {text} (give a path to an .onnx file or zoo:NAME; "
                         f"zoo models: {', '.join(e.name for e in list_entries('model'))})")


def model_dataset(name: str, split: str = "test", preprocess: Preprocess | None = None) -> Dataset:
    """A zoo model's test split (``"test"``) or calibration/train split (``"calib"``).

    The dataset comes with the model's preprocessing, so batches go straight into the model.
    """
    model = get_model(name)
    if split not in _SPLITS:
        raise RistrettoError(f"unknown split {split!r} for {model.name}: use test or calib")
    entry = get(getattr(model, _SPLITS[split]))
    assert isinstance(entry, DatasetEntry)
    return entry.open(preprocess if preprocess is not None else model.preprocess)


def open_dataset(name: str, preprocess: Preprocess | None = None) -> Dataset:
    """``zoo:NAME`` for :func:`ristretto_onnx.data.load_dataset`: a dataset, or a model's test set."""
    entry = get(name)
    if isinstance(entry, ModelEntry):
        return model_dataset(entry.name, "test", preprocess)
    return entry.open(preprocess)


register_named_source("zoo", open_dataset)
