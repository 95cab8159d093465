"""What every format choice on one (model, data) pair shares: prepared once, scored many times.

Thesis 9.2 (fig. 9.1) runs the range analysis once and then scores many candidate formats on the
same images. :func:`build_context` does the once-only part for ``compress`` (prepare the model,
measure the ranges with :func:`~ristretto_onnx.ranges.measure_groups`, load the evaluation
images, score the FP32 baseline); :func:`plan_scorer` is the scorer alone, which ``quantize``
uses for the few alternatives of a scheme at its width. Data flows one way: data -> passes ->
simulated model (:class:`PlanRunner`) -> runtime scores (:class:`~ristretto_onnx.scoring.Scorer`);
the search and the commands above decide.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import ModelProto

from ristretto_onnx.data import Dataset, load_dataset
from ristretto_onnx.data.conform import conform
from ristretto_onnx.data.shards import batch_indices
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.events import ProgressEvent, emit
from ristretto_onnx.options import Backend, CompressOptions
from ristretto_onnx.passes.external import has_external
from ristretto_onnx.passes.graph import single_input
from ristretto_onnx.passes.pipeline import Prepared, prepare
from ristretto_onnx.passes.plan import plan_to_dict
from ristretto_onnx.ranges import measure_groups
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.runtime.simulator import Simulator
from ristretto_onnx.scoring import Scorer
from ristretto_onnx.stats import GroupRange

Log = Callable[[str], None]
Batches = list[tuple[np.ndarray, np.ndarray | None]]


def as_dataset(data, what: str) -> Dataset:
    if data is None:
        raise RistrettoError(f"no {what} data given")
    return data if isinstance(data, Dataset) else load_dataset(data)


def model_input(model: ModelProto) -> str:
    """The one runtime input of ``model`` (scoring feeds images to it)."""
    return single_input(model, "scoring")


def load_batches(ds: Dataset, batch_size: int) -> Batches:
    """The evaluation images, preprocessed once (a search scores them dozens of times)."""
    return [(np.ascontiguousarray(x, dtype=np.float32), y) for x, y in ds.batches(batch_size)]


class PlanRunner:
    """Runs plans through a :class:`~ristretto_onnx.runtime.simulator.Simulator`.

    The simulator changes activation formats without a new session and keeps a few sessions
    for weight assignments, so the search builds a handful of sessions, not one per plan.
    """

    def __init__(self, prepared: Prepared, input_name: str, threads: int | None = None) -> None:
        self.sim = Simulator(prepared.annotated, threads=threads)
        self.input = input_name
        self._key: str | None = None

    @property
    def sessions_built(self) -> int:
        return self.sim.sessions_built

    def __call__(self, plan: Mapping, x: np.ndarray) -> np.ndarray:
        key = json.dumps(plan_to_dict(plan), sort_keys=True)
        if key != self._key:
            self.sim.set_formats(plan, replace=True)
            self._key = key
        return self.sim.run(x)


def plan_scorer(prepared: Prepared, data: Dataset | Batches, *, batch_size: int = 256, metric: str = "top1",
                metric_fn: Callable | None = None, early_reject: bool = True, threads: int | None = None,
                backend: Backend | None = None) -> tuple[Scorer, PlanRunner, Callable[[np.ndarray], np.ndarray]]:
    """A scorer of plans on ``data`` (a Dataset in batches of ``batch_size``, or the batches)
    against the FP32 model, its runner and the FP32 runner."""
    input_name = model_input(prepared.float_model)
    if backend is not None and backend.kind == "ray":
        from ristretto_onnx.runtime.cluster import RayRunner

        runner = RayRunner(prepared.annotated, prepared.float_model,
                           data if isinstance(data, Dataset) else [x for x, _ in data], batch_size=batch_size,
                           workers=backend.workers, address=backend.address,
                           gpus_per_worker=backend.gpus_per_worker, threads=threads)
        run_float = runner.float_runner()
        # the actors hold the images: the scorer keeps the labels and each batch's size only
        batches = data if not isinstance(data, Dataset) else \
            [(np.empty((len(i), 0), np.float32), None if data.labels is None else data.labels[s:s + len(i)])
             for s, i in zip(range(0, len(data), batch_size), batch_indices(data, batch_size))]
        scorer = Scorer(batches, runner, run_float, metric=metric, metric_fn=metric_fn,
                        screen_fraction=0.25 if early_reject else 1.0, ahead=runner.ahead)
        return scorer, runner, run_float
    batches = load_batches(data, batch_size) if isinstance(data, Dataset) else data
    run_float = FloatRunner(prepared.float_model, input_name, threads)
    runner = PlanRunner(prepared, input_name, threads)
    scorer = Scorer(batches, runner, run_float, metric=metric, metric_fn=metric_fn,
                    screen_fraction=0.25 if early_reject else 1.0)
    if has_external(prepared.float_model):  # weights on disk: one model's weights in memory at a time
        run_float.release()  # (the baseline's outputs are kept; a later call rebuilds the session)
    return scorer, runner, run_float


class FloatRunner:
    """The FP32 model's first output, from a session built on first use (:meth:`release` drops it)."""

    def __init__(self, model: ModelProto, input_name: str, threads: int | None = None) -> None:
        self.model, self.input, self.threads, self.session = model, input_name, threads, None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.session is None:
            self.session = create_session(self.model, blocked_layout=True, threads=self.threads)
        return self.session.run(None, {self.input: x})[0]

    def release(self) -> None:
        self.session = None


@dataclass
class SearchContext:
    """What every search on one (model, data) pair shares: built once, scored many times.

    ``prepared`` holds the FP32 reference (BN folded) and the annotated model; ``ranges`` the
    range of every group; ``scorer`` the evaluation data in memory with the FP32 baseline.
    Benchmarks and the thesis reproduction build one and run several searches on it.
    """

    prepared: Prepared
    layers: tuple
    input_name: str
    ranges: list[GroupRange]
    scorer: Scorer
    run_float: Callable[[np.ndarray], np.ndarray]
    seconds: dict[str, float]
    runner: Any = None
    preprocess: Any = None  # the evaluation data's Preprocess, recorded in the written model
    label_offset: int = 0  # and its label offset (model class = label + offset)
    #: ``--weight-granularity auto``: each layer's weights and input E[x^2] (granularity_rule).
    layer_weights: Any = None


def build_context(model, data, *, calib=None, options: CompressOptions | None = None,
                  metric_fn: Callable | None = None, log: Log | None = None,
                  backend: Backend | None = None) -> SearchContext:
    opts = options or CompressOptions()
    log = log if log is not None else (lambda msg: None)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    emit(log, ProgressEvent("prepare", "checking and preparing the model"))
    prepared = model if isinstance(model, Prepared) else prepare(model, fold_bn=opts.fold_bn)
    layers = prepared.layers.select(opts.layers, opts.exclude)
    if not layers:
        raise RistrettoError("the model has no Conv, ConvTranspose, Gemm or MatMul layer to quantize")
    input_name = model_input(prepared.float_model)
    seconds["prepare"] = time.perf_counter() - t

    ds = conform(as_dataset(data, "evaluation"), prepared.float_model)
    calib_ds = conform(as_dataset(calib, "calibration"), prepared.float_model) if calib is not None else ds
    calib_ds = calib_ds.subset(min(opts.calib_size, len(calib_ds)), opts.seed)  # CLI and API: same default
    t = time.perf_counter()
    emit(log, ProgressEvent("ranges", f"range analysis on {len(calib_ds)} calibration images"))
    ranges = measure_groups(prepared.float_model, layers, calib_ds, batch_size=min(opts.batch_size, 64),
                            unsigned=opts.unsigned and opts.scheme != "fixed")  # fixed: one signed format
    layer_weights = None
    if opts.weight_granularity == "auto":
        from ristretto_onnx.granularity_rule import measure_layer_weights
        layer_weights = measure_layer_weights(prepared.float_model, layers, calib_ds, batch_size=min(opts.batch_size, 64))
    seconds["ranges"] = time.perf_counter() - t
    log(f"ranges of {len(ranges)} groups in {len(layers)} layers from {len(calib_ds)} calibration images")

    t = time.perf_counter()
    emit(log, ProgressEvent("baseline", f"FP32 baseline on {len(ds)} images"))
    scorer, runner, run_float = plan_scorer(prepared, ds, batch_size=opts.batch_size, metric=opts.metric,
                                            metric_fn=metric_fn, early_reject=opts.early_reject, backend=backend)
    seconds["baseline"] = time.perf_counter() - t
    log(f"baseline {opts.metric} {scorer.baseline:.4f} on {scorer.n} images")
    return SearchContext(prepared, tuple(layers), input_name, ranges, scorer, run_float, seconds, runner,
                         preprocess=ds.preprocess, label_offset=ds.label_offset, layer_weights=layer_weights)
