"""Quantize a model for one fixed configuration: ``compress`` with the widths given.

The flow follows thesis 9.2 for one point of the design space: analyze the weight ranges,
measure the activation ranges on calibration data (one pass, the range stage of
:mod:`ristretto_onnx.ranges`), ask the scheme (:mod:`ristretto_onnx.schemes`, the same rules
``compress`` searches with) for each category's formats at the given width, and write the
simulated model. Where a scheme has several alternatives at one width (fixed point's
integer/fractional splits, thesis 4.4.1; minifloat's exponent/mantissa splits, 6.3), each
category's alternatives are scored the way ``compress`` scores them, the rest of the network in
float, on a few hundred calibration images: by top-1 accuracy when the data has labels, else by
agreement with the FP32 model.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import time
from dataclasses import replace

import numpy as np

from onnx import ModelProto

from ristretto_onnx.channel_rule import output_rule_plan
from ristretto_onnx.context import load_batches, plan_scorer
from ristretto_onnx.data import Dataset, load_dataset
from ristretto_onnx.data.conform import conform
from ristretto_onnx.data.metadata import record as record_preprocess
from ristretto_onnx.zoo.inputs import is_zoo, zoo_inputs
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Format
from ristretto_onnx.options import Backend, QuantizeOptions
from ristretto_onnx.link_ranges import link_max
from ristretto_onnx.passes.layers import Group
from ristretto_onnx.moments import input_means, input_moments
from ristretto_onnx.passes.bias_correction import apply_bias_correction, weight_error_means
from ristretto_onnx.weight_rounding import with_weights
from ristretto_onnx.passes.analysis.concat_ties import concat_ties
from ristretto_onnx.passes.equalize import equalize
from ristretto_onnx.passes.grid_ties import grid_sources, round_once
from ristretto_onnx.passes.pipeline import Prepared, prepare, simulate
from ristretto_onnx.ranges import measure_groups
from ristretto_onnx.passes.external import has_external
from ristretto_onnx.passes.slots import has_slots
from ristretto_onnx.runtime.calibrate import session_any_size
from ristretto_onnx.runtime.simulator import Simulator
from ristretto_onnx.report import QuantizeResult, VariantScore
from ristretto_onnx.schemes import Scheme, plan_for
from ristretto_onnx.stats import GroupRange, category_groups

__all__ = ["QuantizeOptions", "QuantizeResult", "quantize"]

#: ``--range-rule auto``: the candidates, each one rule for the whole network (range_rules).
AUTO_RULES = ("mse", "max")


def uniform_plan(groups: list[Group], fmt: Format, *, quantize_bias: bool = False) -> dict[str, Format | None]:
    """``fmt`` everywhere (biases only with ``quantize_bias``)."""
    return {g.id: (fmt if g.role != "bias" or quantize_bias else None) for g in groups}


def quantize(source: str | os.PathLike | ModelProto | Prepared, options: QuantizeOptions,
             calib=None, *, threads: int | None = None, backend: Backend | None = None) -> QuantizeResult:
    """The simulated model of ``source`` for ``options`` (``calib``: a Dataset, when needed).

    ``backend=Backend("ray", workers=N)`` scores a scheme's alternatives on Ray actors (same choice).
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if is_zoo(source):  # "zoo:NAME" as on the command line, with its calibration split
        source, _, calib = zoo_inputs(source, (), calib)
    prepared = source if isinstance(source, Prepared) else prepare(source, fold_bn=options.fold_bn)
    if calib is not None:
        calib = conform(calib if isinstance(calib, Dataset) else load_dataset(calib), prepared.float_model)
    if options.equalize:  # with data: the links' channel ranges join the balance (passes.equalize)
        maxima = link_max(prepared.float_model, calib.subset(min(options.calib_size, len(calib)), options.seed),
                          batch_size=options.batch_size, threads=threads) if calib is not None else None
        prepared = prepare(equalize(prepared.float_model, link_max=maxima), fold_bn=False)
    seconds["prepare"] = time.perf_counter() - t
    layers = prepared.layers.select(options.layers, options.exclude)
    ranges: list[GroupRange] = []
    scored: _Scored | None = None  # outputs on the scored calibration images, each model's once
    moments = None  # FP32 input moments of the layers (per-channel output rule, weights' bias correction)
    search: tuple[VariantScore, ...] = ()
    metric = None

    if options.format is not None:
        plan = uniform_plan([g for layer in layers for g in layer.groups], options.format,
                            quantize_bias=options.quantize_bias)
    else:
        calib_set = None
        if options.needs_calibration:
            if calib is None:
                raise RistrettoError(f"--scheme {options.scheme} needs calibration data (--calib)")
            n = min(options.calib_size, len(calib))
            if n == 0:
                raise RistrettoError("the calibration data is empty")
            calib_set = calib.subset(n, options.seed)
        t = time.perf_counter()
        dfp = options.scheme == "dfp"
        ranges = measure_groups(prepared.float_model, layers, calib_set, batch_size=options.batch_size,
                                threads=threads, unsigned=dfp and options.unsigned)
        seconds["calibrate" if calib_set is not None else "ranges"] = time.perf_counter() - t
        if options.range_rule == "auto":
            t = time.perf_counter()
            if calib_set is None:
                raise RistrettoError("--range-rule auto needs calibration data (--calib)")
            scored = _Scored(prepared.float_model, calib_set, options, threads)
            options = replace(options, range_rule=_choose_rule(prepared, layers, ranges, scored, options))
            seconds["range_rule"] = time.perf_counter() - t
        scheme = options.make_scheme()
        by_output = options.refine and dfp and options.weight_granularity == "auto" and calib_set is not None
        if options.weight_granularity == "auto" and options.scheme in ("dfp", "pow2") and not by_output:
            scheme = _layerwise(scheme, options, prepared, layers, calib_set, threads)
        widths = options.widths(scheme)
        t = time.perf_counter()
        variants, search, metric = _choose_variants(scheme, ranges, widths, prepared, calib_set, options, threads,
                                                    backend)
        if search:
            seconds["variant_search"] = time.perf_counter() - t
        plan = plan_for(scheme, ranges, widths, variants)
        ties = concat_ties(prepared.float_model, layers) if dfp else {}
        sources = grid_sources(prepared.float_model, layers) if dfp and options.round_once else {}
        tie = (lambda p: round_once(p, sources, ties)) if sources else dict  # noqa: E731
        if dfp and options.weight_granularity == "channel" and options.channel_rule == "output":
            moments = _input_moments(prepared, layers, calib_set, options, threads)
            plan = output_rule_plan(prepared.float_model, layers, plan, calib_set, moments=moments)
        if dfp and options.refine and calib_set is not None:
            t = time.perf_counter()
            alternatives = None
            if by_output:  # per channel where it brings the network's output closer to FP32's
                channel = plan_for(replace(options, weight_granularity="channel").make_scheme(), ranges, widths,
                                   variants)
                moments = _input_moments(prepared, layers, calib_set, options, threads)
                channel = output_rule_plan(prepared.float_model, layers, channel, calib_set, moments=moments)
                alternatives = {g: f for g, f in channel.items() if f is not None and f.kind == "per-channel"}
            plan = _refine(prepared, plan, [r.group for r in ranges], tie, ties, calib_set, options, threads,
                           alternatives)
            seconds["refine"] = time.perf_counter() - t
        plan = tie(plan)
    candidates = {"nearest": (prepared, {})}  # weight rounding: (prepared, rounded weights)
    if options.weight_rounding != "nearest" and options.format is None:
        t = time.perf_counter()
        rounded = _round_weights(prepared, layers, plan, calib, options, threads)
        if rounded:
            adaptive = (replace(prepared, annotated=with_weights(prepared.annotated, layers, rounded)), rounded)
            candidates = {"adaptive": adaptive} if options.weight_rounding == "adaptive" else {
                **candidates, "adaptive": adaptive}
            seconds["weight_rounding"] = time.perf_counter() - t
    if len(candidates) > 1 and scored is None and calib is not None:
        scored = _Scored(prepared.float_model, calib.subset(min(options.calib_size, len(calib)), options.seed),
                         options, threads)
    means = None  # FP32 input means of the layers (the weights' bias correction), one pass for all candidates
    if moments is not None:
        means = {k: m for k, (m, _) in moments.items()}
    elif len(candidates) > 1 and calib is not None and options.bias_correction in ("on", "weights", "auto"):
        means = input_means(prepared.float_model, layers, calib.subset(min(options.calib_size, len(calib)),
                                                                       options.seed),
                            batch_size=min(options.batch_size, 64), threads=threads)
    built = {}
    for key, (prepared_, rounded) in candidates.items():
        t = time.perf_counter()
        model = simulate(prepared_, plan, rounding=options.rounding)
        seconds["simulate"] = seconds.get("simulate", 0.0) + time.perf_counter() - t
        corrected = "off"
        if calib is not None and options.bias_correction != "off" and options.format is None:
            t = time.perf_counter()
            model, corrected = _bias_correction(prepared_, layers, plan, model, calib, options, threads,
                                                scored, means, rounded)
            seconds["bias_correction"] = seconds.get("bias_correction", 0.0) + time.perf_counter() - t
        built[key] = (model, corrected)
    chosen = next(iter(built)) if len(built) == 1 else _closest(
        {k: m for k, (m, _) in built.items()}, scored)
    model, corrected = built[chosen]
    options = replace(options, weight_rounding=chosen)
    if calib is not None:
        record_preprocess(model, calib.preprocess, label_offset=calib.label_offset)
    measured = {r.group: r.measured for r in ranges} if options.needs_calibration else {}
    return QuantizeResult(model, plan, prepared.layers, tuple(l.name for l in layers), options,
                          measured, search, metric, seconds, corrected)


def _choose_rule(prepared: Prepared, layers, ranges, scored: _Scored, options: QuantizeOptions) -> str:
    """``--range-rule auto`` (dfp): the rule of :data:`AUTO_RULES` whose plan (rounded once where
    asked) brings the network's outputs closest to FP32's on the calibration images
    (output_bias.divergence), the first on a tie. One rule for the whole network: the choice is
    made on the network's output, not on each group's histogram (ristretto_onnx.range_rules)."""
    from ristretto_onnx.output_bias import divergence

    ties = concat_ties(prepared.float_model, layers)
    sources = grid_sources(prepared.float_model, layers) if options.round_once else {}
    scores = []
    for rule in AUTO_RULES:
        scheme = replace(options, range_rule=rule).make_scheme()
        widths = options.widths(scheme)
        variants = {c: None for c in widths}
        plan = plan_for(scheme, ranges, widths, variants)
        plan = round_once(plan, sources, ties) if sources else plan
        out = scored.outputs(simulate(prepared, plan, rounding=options.rounding))
        scores.append(divergence(scored.reference, out, logits=scored.logits))
    return AUTO_RULES[int(np.argmin(scores))]


def _refine(prepared: Prepared, plan, groups, tie, ties, calib_set, options: QuantizeOptions, threads,
            alternatives=None):
    """ristretto_onnx.refine on ``options.refine_size`` calibration images."""
    from ristretto_onnx.context import PlanRunner, model_input
    from ristretto_onnx.refine import refine_plan
    from ristretto_onnx.runtime.session import create_session

    name = model_input(prepared.float_model)
    batches = [np.ascontiguousarray(x, np.float32) for x, _ in
               load_batches(calib_set.take(min(options.refine_size, len(calib_set))), options.batch_size)]
    fp32 = create_session(prepared.float_model, threads=threads)
    reference = [np.asarray(fp32.run(None, {name: x})[0], np.float64) for x in batches]
    runner = PlanRunner(prepared, name, threads)
    units = {m: members for members in ties.values() for m in members} if ties else None
    refined, _ = refine_plan(plan, groups, runner, batches, reference, tie=tie, units=units,
                             alternatives=alternatives)
    return refined


def _layerwise(scheme: Scheme, options: QuantizeOptions, prepared: Prepared, layers, calib_set, threads):
    """``--weight-granularity auto``: per tensor or per channel layer by layer (granularity_rule)."""
    from ristretto_onnx.granularity_rule import LayerwiseGranularity, measure_layer_weights

    evidence = measure_layer_weights(prepared.float_model, layers, calib_set, batch_size=min(options.batch_size, 64),
                                     threads=threads)
    return LayerwiseGranularity.of(scheme, replace(options, weight_granularity="channel").make_scheme(), evidence)


def _input_moments(prepared: Prepared, layers, calib_set, options: QuantizeOptions, threads) -> dict:
    """moments.input_moments of the layers in the FP32 model on the calibration images, which the
    per-channel ``output`` rule and the weights' bias correction (its means) both read."""
    return input_moments(prepared.float_model, layers, calib_set, batch_size=min(options.batch_size, 64),
                         threads=threads)


def _round_weights(prepared: Prepared, layers, plan, calib, options: QuantizeOptions,
                   threads) -> dict[str, np.ndarray]:
    """``{layer name: weights}`` of ``--weight-rounding adaptive`` (ristretto_onnx.weight_rounding)
    on the calibration images (all of them: with 256 and a quarter of the rows, ResNet-20 6/6/6
    lost 0.2 point more): ``H`` from each layer's input in the simulated model of ``plan``."""
    from ristretto_onnx.weight_rounding import adaptive_weights, layer_hessians, rounds_adaptively

    if calib is None or not any(rounds_adaptively(plan.get(f"{l.name}/weights")) for l in layers):
        return {}  # pow2, minifloat (the schemes with grids calibrate): nearest
    calib_set = calib.subset(min(options.calib_size, len(calib)), options.seed)
    hessians = layer_hessians(simulate(prepared, plan, rounding=options.rounding), layers,
                              (x for x, _ in calib_set.batches(min(options.batch_size, 32))), images=len(calib_set),
                              seed=options.seed, threads=threads)
    return adaptive_weights(prepared.float_model, layers, plan, hessians, rounding=options.rounding)


def _closest(candidates: dict[str, ModelProto], scored: _Scored) -> str:
    """``--weight-rounding auto``: the key of ``candidates`` (each bias-corrected as asked) whose
    outputs diverge least from FP32's on ``options.score_size`` calibration images
    (output_bias.divergence, on ``scored``'s images and reference), the first on a tie. Unlike
    ``--bias-correction auto``, no top-1 floor: on SqueezeNet the adaptive rounding halves the
    calibration divergence and raises the held-out agreement with FP32 while top-1 on 300
    calibration images moves by a few images either way (docs/ACCURACY.md)."""
    from ristretto_onnx.output_bias import divergence

    divergences = {k: divergence(scored.reference, scored.outputs(m), logits=scored.logits)
                   for k, m in candidates.items()}
    return min(divergences, key=divergences.get)


def _bias_correction(prepared: Prepared, layers, plan, model: ModelProto, calib, options: QuantizeOptions,
                     threads: int | None, scored: _Scored | None = None,
                     means: dict | None = None, rounded=None) -> tuple[ModelProto, str]:
    """passes.bias_correction on the plan's weights (``weights``, result ``applied``) or each
    layer's mean output error measured in the simulated model (``outputs``,
    ristretto_onnx.output_bias); with ``auto``, the candidate (none, weights, outputs) whose
    outputs diverge least from FP32's on the calibration images (output_bias.divergence: KL of
    the softmax for a classifier's 2-D logits, else the mean squared difference),
    among those that lose at most one of them in top-1 (or agreement with FP32) against none:
    top-1 on a few hundred images is too coarse to decide alone. ``scored``: the outputs
    ``--range-rule auto`` computed already (the FP32 reference, the uncorrected plan's);
    ``means``: the layers' FP32 input means on the same calibration images, measured already."""
    from ristretto_onnx.output_bias import divergence, output_error_deltas

    mode = {"on": "weights"}.get(options.bias_correction, options.bias_correction)
    calib_set = calib.subset(min(options.calib_size, len(calib)), options.seed)
    fixed: dict[str, ModelProto] = {}
    if mode in ("weights", "auto"):
        if means is None:
            means = input_means(prepared.float_model, layers, calib_set, batch_size=min(options.batch_size, 64),
                                threads=threads)
        deltas = weight_error_means(prepared.float_model, layers, plan, means, rounded=rounded)
        if deltas:
            fixed["applied"] = simulate(apply_bias_correction(prepared.annotated, layers, deltas), plan,
                                        rounding=options.rounding)
    if mode in ("outputs", "auto"):
        data = [np.ascontiguousarray(x, np.float32) for x, _ in
                load_batches(calib_set.take(min(options.bias_size, len(calib_set))), min(options.batch_size, 64))]
        sim = lambda d: simulate(apply_bias_correction(prepared.annotated, layers, d), plan,  # noqa: E731
                                 rounding=options.rounding)
        deltas = output_error_deltas(prepared.float_model, layers, sim, data, threads=threads)
        if deltas:
            fixed["outputs"] = sim(deltas)
    if not fixed:
        return model, "off"
    if mode != "auto":
        return next(iter(fixed.items()))[::-1]
    if scored is None:
        scored = _Scored(prepared.float_model, calib_set, options, threads)
    truth = scored.reference.argmax(1) if scored.labels is None else scored.labels
    candidates = {}
    for key, m in {"rejected": model, **fixed}.items():
        out = scored.outputs(m)
        candidates[key] = (divergence(scored.reference, out, logits=scored.logits),
                           int((out.argmax(1) == truth).sum()))
    floor = candidates["rejected"][1] - 1
    best = min((k for k, (_, hits) in candidates.items() if hits >= floor), key=lambda k: candidates[k][0])
    return fixed.get(best, model), best


class _Scored:
    """The first ``score_size`` calibration images and the outputs ``quantize``'s choices compare
    on them, each computed once: the FP32 reference, and each plan's simulated model without bias
    correction (``--range-rule auto`` scores the plans of its rules; the chosen rule's model is
    ``--bias-correction auto``'s candidate "none"), told apart by their bytes."""

    def __init__(self, float_model: ModelProto, calib_set: Dataset, options: QuantizeOptions,
                 threads: int | None) -> None:
        self.batches = load_batches(calib_set.take(min(options.score_size, len(calib_set))), options.batch_size)
        self.threads = threads
        self.labels = None if any(y is None for _, y in self.batches) else \
            np.concatenate([y for _, y in self.batches])
        self.reference = _outputs(float_model, self.batches, threads)
        self.logits = _is_logits(float_model)
        self._runs: dict[bytes, np.ndarray] = {}

    def outputs(self, model: ModelProto) -> np.ndarray:
        """``model``'s first output on the images, run once per model (a model with the same
        bytes as one run before is not run again)."""
        key = hashlib.sha256(model.SerializeToString(deterministic=True)).digest()
        if key not in self._runs:
            self._runs[key] = _outputs(model, self.batches, self.threads)
        return self._runs[key]


def _is_logits(model: ModelProto) -> bool:
    """Whether ``model``'s first output is 2-D (a classifier's logits, compared as a softmax by
    output_bias.divergence)."""
    return len(model.graph.output[0].type.tensor_type.shape.dim) == 2


def _outputs(model: ModelProto, batches, threads: int | None) -> np.ndarray:
    """``model``'s first output on ``batches`` (one session at a time: with weights on disk,
    passes.external, a simulated model runs on the Simulator, which holds its weights once)."""
    if has_external(model) and has_slots(model):
        run = Simulator(model, threads=threads).run
    else:
        session = session_any_size(model, threads=threads)
        name = session.get_inputs()[0].name
        run = lambda x: session.run(None, {name: x})[0]  # noqa: E731
    out = np.concatenate([run(x) for x, _ in batches]).reshape(
        sum(len(x) for x, _ in batches), -1).astype(np.float64)
    if has_external(model):
        del run
        gc.collect()  # this model's weights go before the next model's come
    return out


def _choose_variants(scheme: Scheme, ranges: list[GroupRange], widths: dict[str, int | None],
                     prepared: Prepared, calib_set, options: QuantizeOptions, threads: int | None,
                     backend: Backend | None = None):
    """Each category's alternative at its width, among the candidates compress's search scores.

    A category with one alternative (dfp, pow2) needs no scoring; otherwise every alternative
    is scored with only that category quantized, and the first one (most integer bits: the
    first fixed point split saturates nothing) within one standard error of the best score is
    kept: a split that saturates more must be clearly better, not better by a few images.
    """
    variants: dict[str, int | None] = {}
    scores: list[VariantScore] = []
    scorer = runner = None
    for cat, bits in widths.items():
        groups = category_groups(ranges, cat)
        cands = scheme.variants(groups, bits) if groups and bits is not None else [None]
        if len(cands) == 1:
            variants[cat] = cands[0]
            continue
        if scorer is None:
            if calib_set is None:
                raise RistrettoError(f"--scheme {scheme.name} needs calibration data to choose its splits")
            scored = calib_set.take(min(options.score_size, len(calib_set)))
            scorer, runner, _ = plan_scorer(prepared, scored, batch_size=options.batch_size,
                                            metric="fidelity" if scored.labels is None else "top1",
                                            early_reject=False, threads=threads, backend=backend)
        tried = []
        plans = [plan_for(scheme, ranges, {cat: bits}, {cat: v}) for v in cands]
        scorer.ahead(plans)  # independent: scored concurrently on a cluster
        for v, plan in zip(cands, plans):
            s = scorer.score(plan)
            tried.append(VariantScore(cat, bits, v, scheme.describe(v), s.value, s.n))
        best = _first_within_noise([t.value for t in tried], scorer.n)
        variants[cat] = cands[best]
        scores += [replace(s, chosen=i == best) for i, s in enumerate(tried)]
    if hasattr(runner, "close"):  # a cluster's actors
        runner.close()
    return variants, tuple(scores), None if scorer is None else scorer.metric


def _first_within_noise(values: list[float], n: int) -> int:
    """Index of the first score within one binomial standard error of the best of ``values``."""
    top = max(values)
    se = math.sqrt(max(top * (1.0 - top), 1.0 / n) / n)
    return next(i for i, v in enumerate(values) if v >= top - se)
