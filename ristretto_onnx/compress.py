"""``compress``: the product's main job (thesis 9.2, fig. 9.1) as one function.

    result = compress("resnet20.onnx", "val.npz", scheme="dfp", tolerance=0.01)
    result.save("resnet20-dfp.onnx")            # the simulated model + resnet20-dfp.json

The five stages: weight range analysis (constants), activation range analysis (one pass over the
calibration data), the per-category binary search, the combination (widening the most sensitive
category until the tolerance holds), and optionally per-layer refinement; then the simulated model
is written with every group's format in its ``QuantizeSim`` attributes and a summary in
``metadata_props``. Nothing is printed unless a ``log`` callback is given.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from ristretto_onnx import __version__
from ristretto_onnx.data import Dataset, load_dataset
from ristretto_onnx.data.conform import conform
from ristretto_onnx.data.metadata import record as record_preprocess
from ristretto_onnx.data.zoo_inputs import zoo_inputs
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.events import ProgressEvent, emit, search_log
from ristretto_onnx.formats import Fixed, Format, Minifloat, PerChannel, Pow2, UFixed
from ristretto_onnx.passes.pipeline import Prepared, prepare, simulate
from ristretto_onnx.passes.plan import plan_to_dict
from ristretto_onnx.passes.save import save_model, write_text_atomic
from ristretto_onnx.passes.slots import set_metadata
from ristretto_onnx.policies import SCHEMES, GroupRange, make_scheme
from ristretto_onnx.passes.clip_bounds import clip_bounds
from ristretto_onnx.passes.nonnegative import relu_measure, unsigned_for
from ristretto_onnx.passes.concat_ties import concat_ties
from ristretto_onnx.ranges import activation_ranges, channel_ranges, parameter_ranges, tie_ranges
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.runtime.simulator import Simulator
from ristretto_onnx.scoring import Scorer
from ristretto_onnx.search import BitSearch, SearchOutcome, Trial

Log = Callable[[str], None]

#: Keep preprocessed evaluation images in memory up to this size (bytes); stream above it.
IN_MEMORY_LIMIT = 3 * 2**30


@dataclass(frozen=True)
class CompressOptions:
    scheme: str = "dfp"
    tolerance: float = 0.01
    tolerance_mode: str = "absolute"  # or "relative" (divided by the baseline)
    metric: str = "top1"
    calib_size: int = 500
    granularity: str = "group"  # or "layer"
    weight_granularity: str = "tensor"  # or "channel"
    # dfp: mse (default: never below the thesis's max rule on any zoo network and width, far
    # better at 4-6 bits; docs/PER_CHANNEL.md), max (thesis eq. 5.2) or percentile:P
    range_rule: str = "mse"
    min_bits: int | None = None
    max_bits: int | None = None
    exp_min: int | None = None
    exp_max: int | None = None
    batch_size: int = 256
    seed: int = 0
    fold_bn: bool = True
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    early_reject: bool = True
    #: dfp: ufixed for activations that cannot be negative (passes.nonnegative).
    unsigned: bool = True

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES + ("auto",):
            raise RistrettoError(f"unknown scheme {self.scheme!r}; expected one of {', '.join(SCHEMES)}, auto")
        if self.tolerance_mode not in ("absolute", "relative"):
            raise RistrettoError("--tolerance-mode must be absolute or relative")
        if not 0 <= self.tolerance < 1:
            raise RistrettoError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        if self.granularity not in ("group", "layer"):
            raise RistrettoError("--granularity must be group or layer")
        if self.calib_size < 1:
            raise RistrettoError("--calib-size must be positive")
        if self.weight_granularity == "channel" and self.scheme in ("fixed", "minifloat"):
            raise RistrettoError(f"per-channel weights need --scheme dfp, pow2 or auto; {self.scheme} has one "
                                 f"format per category{' (minifloat has no per-channel form)' if self.scheme == 'minifloat' else ''}")
        if self.min_bits is not None and self.max_bits is not None and self.min_bits > self.max_bits:
            raise RistrettoError("--min-bits must not exceed --max-bits")


@dataclass(frozen=True)
class GroupReport:
    group: str
    role: str
    kind: str
    format: str | None
    bits: int  # 32 for float
    values: int  # weights: parameters; activations: values per image
    max_abs: float


@dataclass
class CompressReport:
    """Everything a user needs to judge and reproduce a compress run (JSON / Markdown / table)."""

    model: str
    scheme: str
    metric: str
    tolerance: float
    tolerance_mode: str
    baseline: float
    final: float
    n_images: int
    test_baseline: float | None
    test_final: float | None
    n_test_images: int | None
    weight_bytes: float
    weight_bytes_fp32: float
    weight_bits_mean: float
    activation_bits_mean: float
    categories: dict[str, Any]
    groups: list[GroupReport]
    evaluations: float  # in full passes over the data
    plans_scored: int
    screened_out: int
    sessions_built: int
    seconds: dict[str, float]
    options: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)
    schemes_tried: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    @property
    def drop(self) -> float:
        return self.baseline - self.final

    @property
    def compression(self) -> float:
        return self.weight_bytes_fp32 / self.weight_bytes if self.weight_bytes else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drop"] = self.drop
        d["weight_compression"] = self.compression
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default)

    def summary_lines(self) -> list[str]:
        """The short table the CLI prints at the end."""
        lines = [
            f"scheme {self.scheme}: {self.metric} {self.baseline:.4f} -> {self.final:.4f} "
            f"(drop {self.drop:+.4f}, tolerance {self.tolerance:g} {self.tolerance_mode}) on {self.n_images} images",
        ]
        if self.test_final is not None:
            lines.append(f"held-out test: {self.test_baseline:.4f} -> {self.test_final:.4f} on {self.n_test_images} images")
        lines.append(f"weights: {self.weight_bytes / 1024:.1f} KiB vs {self.weight_bytes_fp32 / 1024:.1f} KiB FP32 "
                     f"({self.compression:.1f}x), mean {self.weight_bits_mean:.2f} bits; "
                     f"activations mean {self.activation_bits_mean:.2f} bits")
        for cat, c in self.categories.items():
            lines.append(f"  {cat:<13} {('float' if c['bits'] is None else str(c['bits']) + '-bit'):>7}  "
                         f"{c.get('format_example') or ''}")
        lines.append(f"{self.plans_scored} plans scored ({self.screened_out} screened out early), "
                     f"{self.evaluations:.1f} full evaluations, {self.sessions_built} sessions, "
                     f"{self.seconds.get('total', 0.0):.1f} s")
        return lines


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o).__name__)


@dataclass
class CompressResult:
    model: ModelProto
    report: CompressReport
    plan: dict[str, Format | None]

    def save(self, path: str | os.PathLike, report_path: str | os.PathLike | None = None) -> tuple[Path, Path]:
        """Write the simulated model and its JSON report (default: next to it, ``.json``)."""
        path = Path(path)
        report_path = Path(report_path) if report_path else path.with_suffix(".json")
        save_model(self.model, path)
        write_text_atomic(report_path, self.report.to_json())
        return path, report_path


# ---------------------------------------------------------------------------------------------


def _as_dataset(data, what: str) -> Dataset:
    if data is None:
        raise RistrettoError(f"no {what} data given")
    return data if isinstance(data, Dataset) else load_dataset(data)


def _model_input(model: ModelProto) -> str:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise RistrettoError(f"compress needs a model with one input; this one has {len(inputs)}: {inputs}")
    return inputs[0]


def _load_batches(ds: Dataset, batch_size: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The evaluation images, preprocessed once (the search scores them dozens of times)."""
    return [(np.ascontiguousarray(x, dtype=np.float32), y) for x, y in ds.batches(batch_size)]


class _PlanRunner:
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


def _group_ranges(prepared: Prepared, layers, calib: Dataset, batch_size: int,
                  unsigned_on: bool = True) -> list[GroupRange]:
    """Each group's range (and per-channel ranges of weights) for the search policies.

    Layer outputs that fill one Concat buffer are tied: each gets the range of the widest of
    them (:func:`~ristretto_onnx.ranges.tie_ranges`), so every rule gives them one format. A
    layer output bounded by a Clip (ReLU6) is measured after the Clip (passes.clip_bounds).
    """
    params = parameter_ranges(prepared.float_model, layers)
    bounds = clip_bounds(prepared.float_model, layers)
    unsigned = unsigned_for(prepared.float_model, layers, calib) if unsigned_on else frozenset()
    measure = {gid: t for gid, t in relu_measure(prepared.float_model, layers).items() if gid in unsigned}
    measure.update({gid: b.tensor for gid, b in bounds.items()})
    measured = activation_ranges(prepared.float_model, layers, calib, batch_size=min(batch_size, 64),
                                 measure=measure)
    acts = tie_ranges(measured, concat_ties(prepared.float_model, layers))
    channels = channel_ranges(prepared.float_model, layers)
    out: list[GroupRange] = []
    for layer in layers:
        for g in layer.groups:
            stats = params.get(g.id) or acts.get(g.id)
            if stats is None:
                continue
            ch, axis, ch_stats, size = None, None, None, stats.count
            if g.role == "weights":
                if g.id in channels:
                    axis, ch_stats = channels[g.id]
                    ch = tuple(float(c.max_abs) for c in ch_stats)
                size = int(np.prod(layer.weight_shape))
            elif g.role in ("inputs", "outputs"):
                size = max(1, measured[g.id].count // max(len(calib), 1))  # values per image
            out.append(GroupRange(g.id, g.role, g.kind, float(stats.max_abs), ch, axis, size, stats, ch_stats,
                                  bounded=g.id in bounds, unsigned=g.id in unsigned))
    return out


def _bits_of(fmt: Format | None) -> int:
    if fmt is None:
        return 32
    return fmt.bits


def _format_example(plan: Mapping[str, Format | None], ranges: list[GroupRange], category: str) -> str:
    for r in ranges:
        if r.category == category and plan.get(r.group) is not None:
            f = plan[r.group]
            if isinstance(f, PerChannel):
                return f"{f.base_kind}:{f.bits}-bit per channel"
            if isinstance(f, (Fixed, UFixed, Minifloat, Pow2)):
                return str(f) + (" (per group)" if isinstance(f, (Fixed, UFixed)) else "")
    return ""


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


def build_context(model, data, *, calib=None, options: CompressOptions | None = None,
                  metric_fn: Callable | None = None, log: Log | None = None) -> SearchContext:
    opts = options or CompressOptions()
    log = log or (lambda msg: None)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    emit(log, ProgressEvent("prepare", "checking and preparing the model"))
    prepared = prepare(model, fold_bn=opts.fold_bn)
    layers = prepared.layers.select(opts.layers, opts.exclude)
    if not layers:
        raise RistrettoError("the model has no Conv, ConvTranspose, Gemm or MatMul layer to quantize")
    input_name = _model_input(prepared.float_model)
    seconds["prepare"] = time.perf_counter() - t

    ds = conform(_as_dataset(data, "evaluation"), prepared.float_model)
    calib_ds = conform(_as_dataset(calib, "calibration"), prepared.float_model) if calib is not None else ds
    calib_ds = calib_ds.subset(min(opts.calib_size, len(calib_ds)), opts.seed)  # CLI and API: same default
    t = time.perf_counter()
    emit(log, ProgressEvent("ranges", f"range analysis on {len(calib_ds)} calibration images"))
    unsigned = opts.unsigned and opts.scheme != "fixed"  # static fixed point: one signed format
    ranges = _group_ranges(prepared, layers, calib_ds, opts.batch_size, unsigned)
    seconds["ranges"] = time.perf_counter() - t
    log(f"ranges of {len(ranges)} groups in {len(layers)} layers from {len(calib_ds)} calibration images")

    t = time.perf_counter()
    emit(log, ProgressEvent("baseline", f"FP32 baseline on {len(ds)} images"))
    batches = _load_batches(ds, opts.batch_size)
    float_session = create_session(prepared.float_model, blocked_layout=True)

    def run_float(x):
        return float_session.run(None, {input_name: x})[0]

    runner = _PlanRunner(prepared, input_name)
    scorer = Scorer(batches, runner, run_float, metric=opts.metric, metric_fn=metric_fn,
                    screen_fraction=0.25 if opts.early_reject else 1.0)
    seconds["baseline"] = time.perf_counter() - t
    log(f"baseline {opts.metric} {scorer.baseline:.4f} on {scorer.n} images")
    return SearchContext(prepared, tuple(layers), input_name, ranges, scorer, run_float, seconds, runner,
                         preprocess=ds.preprocess)


def compress(
    model: str | os.PathLike | ModelProto,
    data=None,
    *,
    calib=None,
    test=None,
    log: Log | None = None,
    metric_fn: Callable | None = None,
    options: CompressOptions | None = None,
    context: SearchContext | None = None,
    **kwargs,
) -> CompressResult:
    """Find the smallest formats that keep ``metric`` within the tolerance (see module docstring).

    ``model`` is a path or ModelProto; ``data``/``calib``/``test`` anything
    :func:`~ristretto_onnx.data.load_dataset` takes (path, arrays, iterable of batches, Dataset).
    Options are :class:`CompressOptions` fields, as ``options=`` or keywords. A ``context`` from
    :func:`build_context` skips preparation, calibration and the baseline.
    """
    spec, (model, data, calib) = model, zoo_inputs(model, data, calib)  # "zoo:NAME" as on the CLI
    opts = options or CompressOptions(**kwargs)
    if options is not None and kwargs:
        opts = CompressOptions(**{**asdict(options), **kwargs})
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    if context is None and data is None:
        raise RistrettoError("compress needs evaluation data (or a context from build_context)")
    ctx = context or build_context(model, data, calib=calib, options=opts, metric_fn=metric_fn, log=log)
    seconds = dict(ctx.seconds) if context is None else {}
    prepared, ranges, scorer, input_name = ctx.prepared, ctx.ranges, ctx.scorer, ctx.input_name
    evals0, plans0, screened0 = scorer.evaluations, scorer.plans_scored, scorer.screened_out
    sessions0 = ctx.runner.sessions_built if ctx.runner is not None else 0
    tolerance = opts.tolerance * (scorer.baseline if opts.tolerance_mode == "relative" else 1.0)
    log(f"tolerance {tolerance:.4f} ({opts.tolerance_mode})")

    schemes = list(SCHEMES) if opts.scheme == "auto" else [opts.scheme]
    outcomes: dict[str, SearchOutcome] = {}
    t = time.perf_counter()
    for name in schemes:
        scheme = make_scheme(name, weight_granularity=opts.weight_granularity if name in ("dfp", "pow2") else "tensor",
                             exp_min=opts.exp_min, exp_max=opts.exp_max, range_rule=opts.range_rule)
        log(f"searching {name}")
        search = BitSearch(scorer, scheme, ranges, tolerance, min_bits=opts.min_bits,
                           max_bits=opts.max_bits, log=log)
        search.log = search_log(log, scorer, search, name)
        emit(log, ProgressEvent("search", f"searching {name}", name, scorer.plans_scored, scorer.evaluations))
        outcomes[name] = search.run(opts.granularity)
    seconds["search"] = time.perf_counter() - t

    def weight_bytes(plan):
        return sum(r.size * _bits_of(plan.get(r.group)) / 8 for r in ranges if r.role == "weights")

    def holds(o: SearchOutcome) -> bool:
        return not o.final.screened_out and scorer.drop(o.final.value) <= tolerance + 1e-12

    feasible = [n for n in schemes if holds(outcomes[n])] or schemes
    chosen = min(feasible, key=lambda n: (weight_bytes(outcomes[n].plan),
                                          np.mean([_bits_of(outcomes[n].plan.get(r.group)) for r in ranges])))
    outcome = outcomes[chosen]
    plan = outcome.plan

    t = time.perf_counter()
    emit(log, ProgressEvent("write", "building the simulated model", chosen))
    final_model = simulate(prepared, plan)
    seconds["write"] = time.perf_counter() - t

    test_base = test_final = n_test = None
    if test is not None:
        t = time.perf_counter()
        test_ds = _as_dataset(test, "test")
        test_batches = _load_batches(test_ds, opts.batch_size)
        final_session = create_session(final_model)
        test_scorer = Scorer(test_batches, lambda p, x: final_session.run(None, {input_name: x})[0],
                             ctx.run_float, metric=opts.metric, metric_fn=metric_fn, screen_fraction=1.0)
        test_base = test_scorer.baseline
        test_final = test_scorer.score({}).value
        n_test = test_scorer.n
        seconds["test"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0

    weights = [r for r in ranges if r.role == "weights"]
    acts = [r for r in ranges if r.role in ("inputs", "outputs")]
    groups = [GroupReport(r.group, r.role, r.kind, None if plan.get(r.group) is None else str(plan[r.group]),
                          _bits_of(plan.get(r.group)), r.size, r.max_abs) for r in ranges]
    report = CompressReport(
        model=str(spec) if not isinstance(spec, ModelProto) else (spec.graph.name or "<ModelProto>"),
        scheme=chosen, metric=opts.metric, tolerance=opts.tolerance, tolerance_mode=opts.tolerance_mode,
        baseline=scorer.baseline, final=outcome.final.value, n_images=scorer.n,
        test_baseline=test_base, test_final=test_final, n_test_images=n_test,
        weight_bytes=weight_bytes(plan), weight_bytes_fp32=sum(r.size * 4 for r in weights),
        weight_bits_mean=float(np.average([_bits_of(plan.get(r.group)) for r in weights],
                                          weights=[r.size for r in weights])) if weights else 32.0,
        activation_bits_mean=float(np.average([_bits_of(plan.get(r.group)) for r in acts],
                                              weights=[r.size for r in acts])) if acts else 32.0,
        categories={c: {"bits": ch.bits, "variant": ch.variant, "drop_alone": ch.drop, "groups": ch.groups,
                        "format_example": _format_example(plan, ranges, c)}
                    for c, ch in outcome.categories.items()},
        groups=groups, evaluations=scorer.evaluations - evals0, plans_scored=scorer.plans_scored - plans0,
        screened_out=scorer.screened_out - screened0,
        sessions_built=(ctx.runner.sessions_built - sessions0) if ctx.runner is not None else 0, seconds={k: round(v, 3) for k, v in seconds.items()},
        options=asdict(opts), trials=outcome.trials,
        schemes_tried={n: {"weight_bytes": weight_bytes(o.plan), "final": o.final.value, "holds": holds(o)}
                       for n, o in outcomes.items()},
    )
    summary = {"scheme": chosen, "metric": opts.metric, "baseline": round(scorer.baseline, 6),
               "final": round(outcome.final.value, 6), "tolerance": opts.tolerance,
               "weight_bytes": report.weight_bytes, "weight_bytes_fp32": report.weight_bytes_fp32,
               "tool": f"ristretto-onnx {__version__}"}
    set_metadata(final_model, "ristretto.compress", json.dumps(summary, separators=(",", ":")))
    if ctx.preprocess is not None:
        record_preprocess(final_model, ctx.preprocess)
    return CompressResult(final_model, report, plan)
