"""The metric registry: top-1, top-5, fidelity, and user metrics given as ``module:function``.

One definition per metric for every reader: ``evaluate`` streams them through an
:class:`Accumulator`, the search's :class:`~ristretto_onnx.scoring.Scorer` compares them image by
image (:data:`PER_SAMPLE`).

Built-in metrics are *streaming*: they keep two counters and see one batch at a time, so
evaluating a dataset of any size needs memory for one batch only. A custom metric receives all
outputs at once (that is its contract: ``f(outputs, labels) -> float``), so only custom metrics
keep the outputs of the whole dataset.

``fidelity`` needs no labels: it is the share of images on which the simulated model's top-1
class equals the FP32 model's (the reference predictions are computed once per run, see
:mod:`ristretto_onnx.runtime.baseline`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ristretto_onnx.errors import RistrettoError

BUILTIN = ("top1", "top5", "fidelity")

CustomFn = Callable[[np.ndarray, "np.ndarray | None"], float]


def top1_hits(outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row: whether the largest score is at the label (ties: the first maximum, as argmax)."""
    return _scores(outputs).argmax(axis=1) == labels


def topk_hits(outputs: np.ndarray, labels: np.ndarray, k: int = 5) -> np.ndarray:
    """Per row: whether the label is among the ``k`` largest scores.

    A label counts when fewer than ``k`` scores are strictly larger than the label's score, so
    ties at the k-th place count in favour of the label (deterministic, order-independent).
    """
    scores = _scores(outputs)
    if scores.shape[1] <= k:
        return np.ones(len(scores), dtype=bool)
    at_label = scores[np.arange(len(scores)), labels]
    return np.count_nonzero(scores > at_label[:, None], axis=1) < k


def agreement_hits(outputs: np.ndarray, reference_top1: np.ndarray) -> np.ndarray:
    """Per row: whether the top-1 class equals the reference (FP32) top-1 class."""
    return _scores(outputs).argmax(axis=1) == reference_top1


#: The built-in metrics per sample: (outputs, labels, FP32 top-1) -> one hit (0/1) per row.
#: Evaluation sums them; the search's scorer also compares them per image (early rejection).
PER_SAMPLE: dict[str, Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], np.ndarray]] = {
    "top1": lambda out, labels, ref: top1_hits(out, labels),
    "top5": lambda out, labels, ref: topk_hits(out, labels, 5),
    "fidelity": lambda out, labels, ref: agreement_hits(out, ref),
}
assert tuple(PER_SAMPLE) == BUILTIN


def top1_correct(outputs: np.ndarray, labels: np.ndarray) -> int:
    """Number of rows whose largest score is at the label."""
    return int(np.count_nonzero(top1_hits(outputs, labels)))


def topk_correct(outputs: np.ndarray, labels: np.ndarray, k: int = 5) -> int:
    """Number of rows whose label is among the ``k`` largest scores (see :func:`topk_hits`)."""
    return int(np.count_nonzero(topk_hits(outputs, labels, k)))


def agreement(outputs: np.ndarray, reference_top1: np.ndarray) -> int:
    """Number of rows whose top-1 class equals the reference (FP32) top-1 class."""
    return int(np.count_nonzero(agreement_hits(outputs, reference_top1)))


def _scores(outputs: np.ndarray) -> np.ndarray:
    out = np.asarray(outputs)
    return out.reshape(len(out), -1)


@dataclass
class Accumulator:
    """Running state of one metric over the batches of an evaluation."""

    name: str
    custom: CustomFn | None = None
    correct: int = 0
    seen: int = 0
    _outputs: list[np.ndarray] = field(default_factory=list, repr=False)
    _labels: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def needs_labels(self) -> bool:
        return self.name in ("top1", "top5")

    @property
    def needs_reference(self) -> bool:
        return self.name == "fidelity"

    def update(self, outputs: np.ndarray, labels: np.ndarray | None, reference_top1: np.ndarray | None) -> None:
        n = len(outputs)
        if self.custom is not None:
            self._outputs.append(np.array(outputs, copy=True))
            if labels is not None:
                self._labels.append(np.asarray(labels))
        else:
            self.correct += int(np.count_nonzero(PER_SAMPLE[self.name](outputs, labels, reference_top1)))
        self.seen += n

    def value(self) -> float:
        if self.custom is not None:
            outputs = np.concatenate(self._outputs) if self._outputs else np.zeros((0, 0), np.float32)
            labels = np.concatenate(self._labels) if self._labels else None
            try:
                value = self.custom(outputs, labels)
            except RistrettoError:
                raise
            except Exception as e:  # noqa: BLE001 - user code: report, one line
                raise RistrettoError(f"metric {self.name} failed: {type(e).__name__}: {e}") from e
            try:
                return float(value)
            except (TypeError, ValueError):
                raise RistrettoError(f"metric {self.name} returned {type(value).__name__}, not a number") from None
        return self.correct / self.seen if self.seen else float("nan")


def load_metric(spec: str) -> CustomFn:
    """The function named by ``module:function`` (module importable, or a path to a .py file)."""
    text = str(spec).strip()
    module_name, sep, func_name = text.rpartition(":")
    if not sep or not module_name or not func_name:
        raise RistrettoError(f"custom metric {spec!r}: expected module:function, e.g. mymetrics:accuracy")
    try:
        if module_name.endswith(".py"):
            module = _module_from_file(module_name)
        else:
            module = importlib.import_module(module_name)
    except RistrettoError:
        raise
    except Exception as e:  # noqa: BLE001 - import errors of user code, any kind
        raise RistrettoError(f"custom metric {spec!r}: cannot import {module_name!r}: "
                             f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    fn = getattr(module, func_name, None)
    if fn is None:
        raise RistrettoError(f"custom metric {spec!r}: module {module_name!r} has no {func_name!r}")
    if not callable(fn):
        raise RistrettoError(f"custom metric {spec!r}: {func_name!r} is not callable")
    return fn


def _module_from_file(path_text: str):
    import importlib.util
    from pathlib import Path

    path = Path(path_text).expanduser()
    if not path.is_file():
        raise RistrettoError(f"custom metric file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"ristretto_metric_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accumulator(spec: str) -> Accumulator:
    """A fresh accumulator for ``top1``, ``top5``, ``fidelity`` or ``module:function``."""
    name = str(spec).strip()
    if name in BUILTIN:
        return Accumulator(name)
    if ":" in name:
        return Accumulator(name, custom=load_metric(name))
    raise RistrettoError(f"unknown metric {spec!r}: use top1, top5, fidelity or module:function")
