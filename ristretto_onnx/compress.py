"""``compress``: the product's main job (thesis 9.2, fig. 9.1) as one function, the search driver.

    result = compress("resnet20.onnx", "val.npz", scheme="dfp", tolerance=0.01)
    result.save("resnet20-dfp.onnx")            # the simulated model + resnet20-dfp.json

The five stages: weight range analysis (constants), activation range analysis (one pass over the
calibration data), the per-category binary search, the combination (widening the most sensitive
category until the tolerance holds), and optionally per-layer refinement; then the simulated model
is written with every group's format in its ``QuantizeSim`` attributes and a summary in
``metadata_props``. Nothing is printed unless a ``log`` callback is given.

The once-only work lives in :mod:`ristretto_onnx.context`, the options in
:mod:`ristretto_onnx.options`, the report in :mod:`ristretto_onnx.report`; this module drives
the search (:mod:`ristretto_onnx.search`) for each scheme and keeps the smallest plan that holds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
from onnx import ModelProto

from ristretto_onnx import __version__
from ristretto_onnx.context import FloatRunner, PlanRunner, SearchContext, as_dataset, build_context, load_batches
from ristretto_onnx.data.metadata import record as record_preprocess
from ristretto_onnx.zoo.inputs import zoo_inputs
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.events import ProgressEvent, emit, search_log
from ristretto_onnx.options import Backend, CompressOptions
from ristretto_onnx.passes.external import has_external
from ristretto_onnx.passes.pipeline import simulate
from ristretto_onnx.passes.slots import set_metadata
from ristretto_onnx.report import CompressResult, bits_of, compress_report, weight_bytes
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.schemes import SCHEMES
from ristretto_onnx.scoring import Scorer
from ristretto_onnx.search import BitSearch, SearchOutcome

__all__ = ["CompressOptions", "CompressResult", "SearchContext", "build_context", "compress"]

Log = Callable[[str], None]


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
    backend: Backend | None = None,
    **kwargs,
) -> CompressResult:
    """Find the smallest formats that keep ``metric`` within the tolerance (see module docstring).

    ``backend=Backend("ray", workers=N)`` scores on Ray actors (same decisions and report).

    ``model`` is a path or ModelProto; ``data``/``calib``/``test`` anything
    :func:`~ristretto_onnx.data.load_dataset` takes (path, arrays, iterable of batches, Dataset).
    Options are :class:`CompressOptions` fields, as ``options=`` or keywords. A ``context`` from
    :func:`build_context` skips preparation, calibration and the baseline.
    """
    spec, (model, data, calib) = model, zoo_inputs(model, data, calib)  # "zoo:NAME" as on the CLI
    opts = options or CompressOptions(**kwargs)
    if options is not None and kwargs:
        opts = CompressOptions(**{**asdict(options), **kwargs})
    log = log if log is not None else (lambda msg: None)
    t0 = time.perf_counter()
    if context is None and data is None:
        raise RistrettoError("compress needs evaluation data (or a context from build_context)")
    ctx = context or build_context(model, data, calib=calib, options=opts, metric_fn=metric_fn, log=log,
                                   backend=backend)
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
        log(f"searching {name}")
        search = BitSearch(scorer, opts.scheme_named(name, ctx.layer_weights), ranges, tolerance, min_bits=opts.min_bits,
                           max_bits=opts.max_bits, log=log)
        search.log = search_log(log, scorer, search, name)
        emit(log, ProgressEvent("search", f"searching {name}", name, scorer.plans_scored, scorer.evaluations))
        outcomes[name] = search.run(opts.granularity)
    seconds["search"] = time.perf_counter() - t

    def holds(o: SearchOutcome) -> bool:
        return not o.final.screened_out and scorer.drop(o.final.value) <= tolerance + 1e-12

    feasible = [n for n in schemes if holds(outcomes[n])] or schemes
    chosen = min(feasible, key=lambda n: (weight_bytes(outcomes[n].plan, ranges),
                                          np.mean([bits_of(outcomes[n].plan.get(r.group)) for r in ranges])))
    outcome = outcomes[chosen]
    plan = outcome.plan

    t = time.perf_counter()
    emit(log, ProgressEvent("write", "building the simulated model", chosen))
    final_model = simulate(prepared, plan)
    seconds["write"] = time.perf_counter() - t

    test_result: tuple[float | None, float | None, int | None] = (None, None, None)
    if test is not None:
        t = time.perf_counter()
        if has_external(final_model) and isinstance(ctx.runner, PlanRunner):
            # weights on disk: the search's simulator runs the plan (the same numbers, weights
            # held once) and the FP32 session goes once the test baseline is scored
            run_final = lambda p, x: ctx.runner(plan, x)  # noqa: E731
        else:
            final_session = create_session(final_model)
            run_final = lambda p, x: final_session.run(None, {input_name: x})[0]  # noqa: E731
        run_float = ctx.run_float
        if hasattr(run_float, "run_batch"):  # a cluster's FP32 side holds the evaluation batches, not these
            run_float = FloatRunner(prepared.float_model, input_name)
        test_scorer = Scorer(load_batches(as_dataset(test, "test"), opts.batch_size), run_final,
                             run_float, metric=opts.metric, metric_fn=metric_fn, screen_fraction=1.0)
        if has_external(final_model) and hasattr(run_float, "release"):
            run_float.release()
        test_result = (test_scorer.baseline, test_scorer.score({}).value, test_scorer.n)
        seconds["test"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0

    counts = {"evaluations": scorer.evaluations - evals0, "plans_scored": scorer.plans_scored - plans0,
              "screened_out": scorer.screened_out - screened0,
              "sessions_built": (ctx.runner.sessions_built - sessions0) if ctx.runner is not None else 0}
    report = compress_report(
        model=str(spec) if not isinstance(spec, ModelProto) else (spec.graph.name or "<ModelProto>"),
        scheme=chosen, options=opts, plan=plan, ranges=ranges, baseline=scorer.baseline, outcome=outcome,
        n_images=scorer.n, test=test_result, counts=counts, seconds=seconds,
        schemes_tried={n: {"weight_bytes": weight_bytes(o.plan, ranges), "final": o.final.value, "holds": holds(o)}
                       for n, o in outcomes.items()},
    )
    summary = {"scheme": chosen, "metric": opts.metric, "baseline": round(scorer.baseline, 6),
               "final": round(outcome.final.value, 6), "tolerance": opts.tolerance,
               "weight_bytes": report.weight_bytes, "weight_bytes_fp32": report.weight_bytes_fp32,
               "tool": f"ristretto-onnx {__version__}"}
    set_metadata(final_model, "ristretto.compress", json.dumps(summary, separators=(",", ":")))
    if ctx.preprocess is not None:
        record_preprocess(final_model, ctx.preprocess, label_offset=ctx.label_offset)
    return CompressResult(final_model, report, plan)
