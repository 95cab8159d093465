"""Quantize a model for one fixed configuration: the work behind ``ristretto-onnx quantize``.

The flow follows thesis 9.2 for one point of the design space: analyze the weight ranges,
measure the activation ranges on calibration data (one pass), pick formats with the scheme's
rule (dfp: a range rule, weights per tensor or per output channel; layer outputs that share a
Concat buffer share one format), and write the simulated model. For plain fixed point (ch. 4)
the one shared format is chosen by trying the integer/fractional splits on a few hundred
calibration images, scored by top-1 accuracy when the data has labels, else by agreement with
the FP32 model.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from onnx import ModelProto

from ristretto_onnx.data import Dataset, load_dataset
from ristretto_onnx.data.conform import conform
from ristretto_onnx.data.metadata import record as record_preprocess
from ristretto_onnx.data.zoo_inputs import is_zoo, zoo_inputs
from ristretto_onnx.errors import FormatError, RistrettoError
from ristretto_onnx.formats import Format, Pow2, integer_bits, parse_format
from ristretto_onnx.passes.layers import Group, LayerSet
from ristretto_onnx.passes.pipeline import Prepared, prepare, simulate
from ristretto_onnx.passes.plan import GroupFormat, plan_to_dict
from ristretto_onnx.channel_rule import output_rule_plan
from ristretto_onnx.passes.bias_correction import apply_bias_correction, input_means, weight_error_means
from ristretto_onnx.passes.clip_bounds import clip_bounds
from ristretto_onnx.passes.equalize import equalize
from ristretto_onnx.passes.grid_ties import grid_sources, round_once
from ristretto_onnx.passes.nonnegative import relu_measure, unsigned_for
from ristretto_onnx.passes.concat_ties import concat_ties
from ristretto_onnx.range_rules import check_rule
from ristretto_onnx.ranges import channel_ranges, group_ranges, tie_ranges
from ristretto_onnx.runtime.calibrate import RangeStats, session_any_size
from ristretto_onnx.schemes import (DEFAULT_POW2, SCHEMES, dfp_plan, fixed_plan, minifloat_plan,
                                    pow2_plan, uniform_plan)


@dataclass(frozen=True)
class QuantizeOptions:
    """One configuration: a scheme and bit widths, or one forced ``format``."""

    scheme: str | None = None
    bits: int | None = None
    weight_bits: int | None = None
    act_bits: int | None = None
    format: Format | None = None
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    fold_bn: bool = True
    quantize_bias: bool = False
    pow2: Pow2 = DEFAULT_POW2
    rounding: str = "nearest_even"
    weight_granularity: str = "tensor"  # or "channel": one format per output channel (dfp, pow2)
    range_rule: str = "max"  # dfp: max (thesis eq. 5.2), percentile:P or mse
    calib_size: int = 500
    score_size: int = 300
    batch_size: int = 256
    seed: int = 0
    #: dfp: ufixed for activations that cannot be negative (passes.nonnegative).
    unsigned: bool = True
    #: passes.bias_correction: on, off, or auto (kept when it scores better on calibration images).
    bias_correction: str = "auto"
    #: per-channel weights: "output" (ristretto_onnx.channel_rule) or "range" (range_rule per channel).
    channel_rule: str = "output"
    #: dfp: a layer input reading another layer's output unchanged takes its format (passes.grid_ties).
    round_once: bool = True
    #: cross-layer equalization of Conv -> ReLU/ReLU6 -> Conv pairs first (passes.equalize).
    equalize: bool = False

    def __post_init__(self) -> None:
        if self.format is not None:
            object.__setattr__(self, "format", parse_format(self.format))
        if self.scheme is not None and self.scheme not in SCHEMES:
            raise RistrettoError(f"unknown scheme {self.scheme!r}; expected one of {', '.join(SCHEMES)}")
        if self.scheme is None and self.format is None:
            raise RistrettoError("give a --scheme (fixed, dfp, minifloat, pow2) or a --format")
        for name in ("bits", "weight_bits", "act_bits"):
            v = getattr(self, name)
            if v is not None and not 2 <= v <= 32:
                raise RistrettoError(f"--{name.replace('_', '-')} must be between 2 and 32, got {v}")
        if self.format is None and self.scheme != "pow2" and None in (self.weight_bits_, self.act_bits_):
            raise RistrettoError(f"--scheme {self.scheme} needs --bits (or both --weight-bits and --act-bits)")
        if self.weight_granularity not in ("tensor", "channel"):
            raise RistrettoError(f"--weight-granularity must be tensor or channel, not {self.weight_granularity!r}")
        if self.weight_granularity == "channel" and (self.format is not None or self.scheme not in ("dfp", "pow2")):
            what = "--format" if self.format is not None else f"--scheme {self.scheme}"
            raise RistrettoError(f"per-channel weights need --scheme dfp or pow2; {what} has one format per "
                                 f"group{' (minifloat has no per-channel form)' if self.scheme == 'minifloat' else ''}")
        check_rule(self.range_rule)
        if self.channel_rule not in ("output", "range"):
            raise RistrettoError(f"--channel-rule must be output or range, not {self.channel_rule!r}")
        if self.bias_correction not in ("auto", "on", "off"):
            raise RistrettoError(f"--bias-correction must be auto, on or off, not {self.bias_correction!r}")
        if self.range_rule != "max" and (self.format is not None or self.scheme != "dfp"):
            raise RistrettoError(f"--range-rule {self.range_rule} applies to --scheme dfp only")
        for name in ("calib_size", "score_size", "batch_size"):
            if getattr(self, name) < 1:
                raise RistrettoError(f"--{name.replace('_', '-')} must be positive")

    @property
    def weight_bits_(self) -> int | None:
        return self.weight_bits if self.weight_bits is not None else self.bits

    @property
    def act_bits_(self) -> int | None:
        return self.act_bits if self.act_bits is not None else self.bits

    @property
    def needs_calibration(self) -> bool:
        return self.format is None and self.scheme in ("fixed", "dfp", "minifloat")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = None if self.format is None else str(self.format)
        d["pow2"] = str(self.pow2)
        d["layers"], d["exclude"] = list(self.layers), list(self.exclude)
        return d


#: Output error power (relative to the FP32 outputs' power) below which a split counts as lossless:
#: 100 dB SNR, far below any effect on a prediction.
LOSSLESS_REL_MSE = 1e-10
#: Splits tried by the fixed point search.
MAX_SPLITS = 8


@dataclass(frozen=True)
class SplitScore:
    """How one shared fixed point split scored on the scoring images."""

    int_bits: int
    formats: tuple[str, ...]
    top1: float | None
    agreement: float
    rel_mse: float

    @property
    def key(self) -> tuple[float, float, float, int]:
        """Higher is better: accuracy (or agreement without labels), agreement, output error,
        then more integer bits.

        Output errors below :data:`LOSSLESS_REL_MSE` are all "lossless" and tie, so among wide
        formats the one with the most headroom wins: it saturates least on data unseen here.
        """
        primary = self.top1 if self.top1 is not None else self.agreement
        return (primary, self.agreement, -max(self.rel_mse, LOSSLESS_REL_MSE), self.int_bits)


@dataclass(frozen=True, eq=False)
class QuantizeResult:
    model: ModelProto = field(repr=False)
    plan: dict[str, GroupFormat]
    layers: LayerSet
    selected: tuple[str, ...]
    options: QuantizeOptions
    ranges: dict[str, RangeStats] = field(repr=False, default_factory=dict)
    fixed_search: tuple[SplitScore, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    #: "applied", "rejected" (auto: it did not score better on the calibration images) or "off".
    bias_correction: str = "off"

    def sidecar(self, **extra: Any) -> dict[str, Any]:
        """The JSON written next to the output model: every group's format and how it was chosen."""
        formats = {gid: None for gid in self.layers.group_ids}
        formats.update(plan_to_dict(self.plan))
        d: dict[str, Any] = dict(extra)
        d.update({
            "options": self.options.to_dict(),
            "formats": formats,
            "layers": [{"name": l.name, "op_type": l.op_type, "kind": l.kind,
                        "selected": l.name in self.selected,
                        "groups": {g.role: g.tensor for g in l.groups}} for l in self.layers],
            "skipped_nodes": [asdict(s) for s in self.layers.skipped],
            "bias_correction": self.bias_correction,
        })
        if self.ranges:
            d["max_abs"] = {gid: r.max_abs for gid, r in self.ranges.items()}
        if self.fixed_search:
            d["fixed_search"] = [asdict(s) for s in self.fixed_search]
        d["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        return d


def quantize(source: str | os.PathLike | ModelProto | Prepared, options: QuantizeOptions,
             calib=None, *, threads: int | None = None) -> QuantizeResult:
    """The simulated model of ``source`` for ``options`` (``calib``: a Dataset, when needed)."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if is_zoo(source):  # "zoo:NAME" as on the command line, with its calibration split
        source, _, calib = zoo_inputs(source, (), calib)
    prepared = source if isinstance(source, Prepared) else prepare(source, fold_bn=options.fold_bn)
    if options.equalize:
        prepared = prepare(equalize(prepared.float_model), fold_bn=False)
    if calib is not None:
        calib = conform(calib if isinstance(calib, Dataset) else load_dataset(calib), prepared.float_model)
    seconds["prepare"] = time.perf_counter() - t
    layers = prepared.layers.select(options.layers, options.exclude)
    groups = [g for layer in layers for g in layer.groups]
    wbits, abits = options.weight_bits_, options.act_bits_
    ranges: dict[str, RangeStats] = {}
    search: tuple[SplitScore, ...] = ()

    per_channel = options.weight_granularity == "channel"
    channels = channel_ranges(prepared.float_model, layers) if per_channel else None
    if options.format is not None:
        plan = uniform_plan(groups, options.format, quantize_bias=options.quantize_bias)
    elif options.scheme == "pow2":
        plan = pow2_plan(groups, options.pow2, quantize_bias=options.quantize_bias, channels=channels)
    else:
        if calib is None:
            raise RistrettoError(f"--scheme {options.scheme} needs calibration data (--calib)")
        n = min(options.calib_size, len(calib))
        if n == 0:
            raise RistrettoError("the calibration data is empty")
        calib_set = calib.subset(n, options.seed)
        t = time.perf_counter()
        bounds = clip_bounds(prepared.float_model, layers)
        dfp = options.scheme == "dfp" and options.unsigned
        unsigned = unsigned_for(prepared.float_model, layers, calib) if dfp else frozenset()
        measure = {gid: t for gid, t in relu_measure(prepared.float_model, layers).items() if gid in unsigned}
        measure.update({gid: b.tensor for gid, b in bounds.items()})
        ranges = group_ranges(prepared.float_model, layers, calib_set, batch_size=options.batch_size,
                              threads=threads, measure=measure)
        seconds["calibrate"] = time.perf_counter() - t
        kw = dict(weight_bits=wbits, act_bits=abits, quantize_bias=options.quantize_bias)
        if options.scheme == "dfp":
            tied = tie_ranges(ranges, concat_ties(prepared.float_model, layers))
            plan = dfp_plan(groups, tied, range_rule=options.range_rule, channels=channels,
                            bounded=frozenset(bounds), unsigned=unsigned, **kw)
            if options.round_once:
                plan = round_once(plan, grid_sources(prepared.float_model, layers),
                                  concat_ties(prepared.float_model, layers))
            if per_channel and options.channel_rule == "output":
                plan = output_rule_plan(prepared.float_model, layers, plan, calib_set,
                                        batch_size=min(options.batch_size, 64), threads=threads)
        elif options.scheme == "minifloat":
            plan = minifloat_plan(groups, ranges, **kw)
        else:
            t = time.perf_counter()
            plan, search = _search_fixed(prepared, groups, ranges, calib_set, options, threads)
            seconds["fixed_search"] = time.perf_counter() - t
    t = time.perf_counter()
    model = simulate(prepared, plan, rounding=options.rounding)
    seconds["simulate"] = time.perf_counter() - t
    corrected = "off"
    if calib is not None and options.bias_correction != "off" and options.format is None:
        t = time.perf_counter()
        model, corrected = _bias_correction(prepared, layers, plan, model, calib, options, threads)
        seconds["bias_correction"] = time.perf_counter() - t
    if calib is not None:
        record_preprocess(model, calib.preprocess)
    return QuantizeResult(model, plan, prepared.layers, tuple(l.name for l in layers), options,
                          ranges, search, seconds, corrected)


def _bias_correction(prepared: Prepared, layers, plan, model: ModelProto, calib, options: QuantizeOptions,
                     threads: int | None) -> tuple[ModelProto, str]:
    """passes.bias_correction on the plan's weights; with ``auto``, kept only when it lowers the
    output error against FP32 on the calibration images without losing top-1 (or agreement) on
    more than one of them (top-1 on a few hundred images is too coarse to decide alone)."""
    calib_set = calib.subset(min(options.calib_size, len(calib)), options.seed)
    means = input_means(prepared.float_model, layers, calib_set, batch_size=min(options.batch_size, 64),
                        threads=threads)
    deltas = weight_error_means(prepared.float_model, layers, plan, means)
    if not deltas:
        return model, "off"
    annotated = apply_bias_correction(prepared.annotated, layers, deltas)
    fixed = simulate(annotated, plan, rounding=options.rounding)
    if options.bias_correction == "on":
        return fixed, "applied"
    scorer = _Scorer(prepared.float_model, calib_set.take(min(options.score_size, len(calib_set))),
                     options.batch_size, threads)
    before, after = scorer.score(model, 0, ()), scorer.score(fixed, 0, ())
    primary = lambda s: s.top1 if s.top1 is not None else s.agreement  # noqa: E731
    one = 1.0 / max(len(scorer.ref_pred), 1)
    helps = after.rel_mse < before.rel_mse and primary(after) >= primary(before) - one - 1e-12
    return (fixed, "applied") if helps else (model, "rejected")


def _search_fixed(prepared: Prepared, groups: list[Group], ranges, calib_set,
                  options: QuantizeOptions, threads: int | None):
    """Try the shared integer/fractional splits (thesis 4.4.1) and keep the best-scoring one."""
    kw = dict(weight_bits=options.weight_bits_, act_bits=options.act_bits_,
              quantize_bias=options.quantize_bias)
    candidates = _int_bits_candidates(groups, ranges, **kw)
    scorer = _Scorer(prepared.float_model, calib_set.take(min(options.score_size, len(calib_set))),
                     options.batch_size, threads)
    scores = []
    best_plan, best = None, None
    for il in candidates:
        plan = fixed_plan(groups, il, **kw)
        model = simulate(prepared, plan, rounding=options.rounding)
        s = scorer.score(model, il, tuple(sorted({str(f) for f in plan.values() if f is not None})))
        scores.append(s)
        if best is None or s.key > best.key:
            best, best_plan = s, plan
    return best_plan, tuple(scores)


def _int_bits_candidates(groups: list[Group], ranges, *, weight_bits: int, act_bits: int,
                         quantize_bias: bool) -> list[int]:
    """Integer lengths to try for the shared fixed point format, most integer bits first.

    Starts one bit above the length that saturates nothing on the calibration data (headroom for
    unseen data beyond the calibration maximum) and goes down one bit at a time, trading the rare
    largest values for fractional precision as Q4.4 for LeNet and Q9.7 for CaffeNet did; splits
    that float32 cannot represent are skipped.
    """
    wanted = [g for g in groups if quantize_bias or g.role != "bias"]
    if not wanted:
        return []
    top = max(ranges[g.id].max_abs for g in wanted)
    start = integer_bits(top) + 1
    found: list[int] = []
    for il in range(start, start - 4 * MAX_SPLITS, -1):
        try:
            fixed_plan(wanted, il, weight_bits=weight_bits, act_bits=act_bits, quantize_bias=True)
        except FormatError:
            continue
        found.append(il)
        if len(found) == MAX_SPLITS:
            break
    if not found:
        raise RistrettoError(f"no fixed point split of {weight_bits}/{act_bits} bits represents "
                             f"values up to {top:g}")
    return found


class _Scorer:
    """Scoring images held in memory with the FP32 model's outputs for them."""

    def __init__(self, float_model: ModelProto, data, batch_size: int, threads: int | None) -> None:
        initializers = {t.name for t in float_model.graph.initializer}
        inputs = [i.name for i in float_model.graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise RistrettoError(f"scoring needs a model with one input, this one has {len(inputs)}")
        self.input = inputs[0]
        self.threads = threads
        self.batches = [(np.ascontiguousarray(x, dtype=np.float32), y) for x, y in data.batches(batch_size)]
        self.labels = (None if any(y is None for _, y in self.batches)
                       else np.concatenate([y for _, y in self.batches]))
        self.reference = self._outputs(float_model)
        self.ref_pred = self.reference.reshape(len(self.reference), -1).argmax(axis=1)
        self.ref_energy = float(np.mean(np.square(self.reference, dtype=np.float64))) or 1.0

    def _outputs(self, model: ModelProto) -> np.ndarray:
        session = session_any_size(model, threads=self.threads)
        return np.concatenate([session.run(None, {self.input: x})[0] for x, _ in self.batches])

    def score(self, model: ModelProto, int_bits: int, formats: tuple[str, ...]) -> SplitScore:
        out = self._outputs(model)
        pred = out.reshape(len(out), -1).argmax(axis=1)
        top1 = None if self.labels is None else float(np.mean(pred == self.labels))
        agreement = float(np.mean(pred == self.ref_pred))
        diff = out.astype(np.float64) - self.reference
        rel_mse = float(np.mean(np.square(diff))) / self.ref_energy
        if not np.isfinite(rel_mse):
            rel_mse = float("inf")
        return SplitScore(int_bits, formats, top1, agreement, rel_mse)
