"""Batched evaluation of a model (FP32 or simulated) over a dataset.

Batches are streamed from the dataset, run, scored and dropped, so memory stays at one batch
whatever the dataset size (custom metrics, which need every output, are the exception).
Throughput (``images_per_s``) counts inference time only, so it compares models, not disks.

A model with ``QuantizeSim`` nodes runs through a :class:`~ristretto_onnx.runtime.simulator.Simulator`
(its exact lowered graph is faster than the function bodies); an FP32 model through the same
session factory, so both sides of a comparison get the same treatment.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.runtime.baseline import Baseline, recall, remember
from ristretto_onnx.runtime.metrics import Accumulator, accumulator
from ristretto_onnx.runtime.progress import Progress
from ristretto_onnx.runtime.runner import Runner, _model_of, runner_for
from ristretto_onnx.runtime.simulator import Simulator

#: ``metadata_props`` key a simulated model may carry to name its FP32 model (a path).
REFERENCE_KEY = "ristretto.reference"



@dataclass(frozen=True)
class EvalResult:
    """Metric values by name, how many images, and how fast.

    ``images_per_s`` is images over inference seconds; ``seconds`` is the whole evaluation
    (data loading and scoring included).
    """

    metrics: Mapping[str, float]
    n: int
    images_per_s: float
    seconds: float
    predictions: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready: one key per metric, then ``images_per_s``, ``n`` and ``seconds``."""
        return {**self.metrics, "images_per_s": round(self.images_per_s, 1), "n": self.n,
                "seconds": round(self.seconds, 3)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        parts = [f"{k} {v:.4f}" for k, v in self.metrics.items()]
        return ", ".join(parts + [f"{self.images_per_s:,.0f} images/s ({self.n} images)"])


def baseline(model: ModelProto | str | os.PathLike, dataset, *, batch_size: int = 256,
             progress: bool | None = None, backend=None) -> Baseline:
    """The FP32 baseline of ``model`` on ``dataset``, from the memo when already computed."""
    key, hit = recall(model, dataset)
    if hit is not None:
        return hit
    labels = getattr(dataset, "labels", None)
    metrics = ("top1", "top5") if labels is not None else ()
    result = evaluate(model, dataset, metrics, batch_size=batch_size, progress=progress,
                      keep_predictions=True, backend=backend, _description="FP32 baseline")
    entry = Baseline(result.predictions, result.n, result.metrics.get("top1"), result.metrics.get("top5"),
                     result.images_per_s)
    remember(key, entry, dataset)
    return entry


def _reference_predictions(reference, model, dataset, batch_size: int, progress, backend=None) -> np.ndarray:
    if reference is None:
        proto = model.source if isinstance(model, Simulator) else _model_of(model)
        named = None
        if proto is not None:
            named = next((p.value for p in proto.metadata_props if p.key == REFERENCE_KEY), None)
        if named is None:
            raise RistrettoError("metric fidelity compares with the FP32 model: give --reference FP32.onnx")
        reference = named
    if isinstance(reference, np.ndarray):
        preds = reference
    else:
        preds = baseline(reference, dataset, batch_size=batch_size, progress=progress, backend=backend).predictions
    if len(preds) != len(dataset):
        raise RistrettoError(f"the reference has {len(preds)} predictions for {len(dataset)} images")
    return preds


def evaluate(
    model,
    dataset,
    metrics: Sequence[str] | str = ("top1",),
    *,
    batch_size: int = 256,
    reference=None,
    progress: bool | None = None,
    keep_predictions: bool = False,
    providers=None,
    threads=None,
    backend=None,
    _description: str = "evaluating",
) -> EvalResult:
    """Score ``model`` on ``dataset`` with each of ``metrics``.

    ``model``: an ONNX model or path (FP32 or simulated), a
    :class:`~ristretto_onnx.runtime.simulator.Simulator`, an onnxruntime session or a callable.
    ``dataset``: a :class:`~ristretto_onnx.data.Dataset` or anything
    :func:`~ristretto_onnx.data.load_dataset` accepts. ``metrics``: ``top1``, ``top5``,
    ``fidelity`` (needs ``reference``: the FP32 model, or its top-1 predictions) or
    ``module:function``. ``progress``: ``None`` shows a bar on a terminal only. ``backend``: an
    :class:`~ristretto_onnx.options.Backend`; ``ray`` runs the batches on Ray actors that read
    their shards themselves (:mod:`ristretto_onnx.runtime.cluster`), with the same metrics.
    """
    from ristretto_onnx.data import Dataset, load_dataset
    from ristretto_onnx.data.metadata import dataset_for

    if isinstance(model, (str, os.PathLike, ModelProto)):  # the model's recorded preprocessing
        dataset = dataset_for(model, dataset)[0]
    elif not isinstance(dataset, Dataset):
        dataset = load_dataset(dataset)
    if isinstance(metrics, str):
        metrics = (metrics,)
    accs: list[Accumulator] = [accumulator(m) for m in dict.fromkeys(metrics)]
    if len(dataset) == 0:
        raise RistrettoError(f"dataset {dataset.name} is empty")
    if any(a.needs_labels for a in accs) and dataset.labels is None:
        names = ", ".join(a.name for a in accs if a.needs_labels)
        raise RistrettoError(f"metric {names} needs labels; {dataset.name} has none (use --metric fidelity)")
    ref = None
    if any(a.needs_reference for a in accs):
        ref = _reference_predictions(reference, model, dataset, batch_size, progress, backend)
    cluster = backend is not None and backend.kind == "ray"
    stream = _on_cluster(model, dataset, batch_size, backend, threads) if cluster else \
        _locally(runner_for(model, providers=providers, threads=threads), dataset, batch_size)

    preds: list[np.ndarray] = []
    t_start = time.perf_counter()
    infer = 0.0
    seen = 0
    with Progress(len(dataset), _description, show=progress) as bar:
        for x, y, out, dt in stream:
            infer += dt
            if out.shape[0] != len(x):
                raise RistrettoError(f"the model returned {out.shape[0]} rows for a batch of {len(x)}")
            scores = out.reshape(len(out), -1)
            r = None if ref is None else ref[seen:seen + len(x)]
            for acc in accs:
                acc.update(scores, y, r)
            if keep_predictions:
                preds.append(scores.argmax(axis=1))
            seen += len(x)
            bar.advance(len(x), seen / infer if infer > 0 else None)
    values = {a.name: a.value() for a in accs}
    return EvalResult(values, seen, seen / infer if infer > 0 else float("inf"),
                      time.perf_counter() - t_start,
                      np.concatenate(preds) if keep_predictions else None)


def _locally(run: Runner, dataset, batch_size: int):
    """``(x, y, outputs, seconds)`` per batch, run in this process."""
    for x, y in dataset.batches(batch_size):
        t0 = time.perf_counter()
        out = np.asarray(run(x))
        yield x, y, out, time.perf_counter() - t0


def _on_cluster(model, dataset, batch_size: int, backend, threads):
    """The same per batch from Ray actors holding the shards (``x``: a placeholder of the batch's size)."""
    from ristretto_onnx.runtime.cluster import RayRunner
    from ristretto_onnx.runtime.cluster_weights import read_light

    # a path: weights in an external-data file stay there (the actors read them)
    proto = read_light(model) if isinstance(model, (str, os.PathLike)) else _model_of(model)
    if proto is None:
        raise RistrettoError("the ray backend evaluates ONNX models (a path or a ModelProto), not "
                             f"a {type(model).__name__}")
    runner = RayRunner(None, proto, dataset, batch_size=batch_size, workers=backend.workers,
                       address=backend.address, gpus_per_worker=backend.gpus_per_worker, threads=threads)
    labels = dataset.labels
    try:
        for k, start in enumerate(range(0, len(dataset), batch_size)):
            t0 = time.perf_counter()
            out = np.asarray(runner.run_batch(None, k))
            n = min(batch_size, len(dataset) - start)
            yield (np.empty((n, 0), np.float32), None if labels is None else labels[start:start + n], out,
                   time.perf_counter() - t0)
    finally:
        runner.close()
