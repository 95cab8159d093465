"""The results of ``compress`` and ``quantize``: what was chosen, how well it holds, how to redo it.

One dataclass per command, each rendered by one function per output: :meth:`CompressReport.to_json`
(the JSON next to the model), :meth:`CompressReport.summary_lines` (the terminal) and
:meth:`QuantizeResult.sidecar` (quantize's JSON). The weight memory is counted as the thesis does
(bits per parameter, table 5.1); the FP32 baseline and the final metric come from the scorer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from ristretto_onnx import __version__
from ristretto_onnx.formats import Fixed, Format, Minifloat, PerChannel, Pow2, UFixed
from ristretto_onnx.options import QuantizeOptions
from ristretto_onnx.passes.layers import LayerSet
from ristretto_onnx.passes.plan import GroupFormat, plan_to_dict
from ristretto_onnx.passes.save import save_model, write_text_atomic
from ristretto_onnx.search import Trial
from ristretto_onnx.stats import GroupRange, RangeStats


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
        return report_json(self.to_dict())

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


def report_json(d: Mapping[str, Any]) -> str:
    """A report as the JSON written next to its model (numpy scalars written as numbers)."""
    return json.dumps(d, indent=2, default=_json_default)


def save_with_report(model: ModelProto, report, path: str | os.PathLike,
                     report_path: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``model`` and ``report.to_json()`` (default: next to it, ``.json``), atomically."""
    path = Path(path)
    report_path = Path(report_path) if report_path else path.with_suffix(".json")
    save_model(model, path)
    write_text_atomic(report_path, report.to_json())
    return path, report_path


@dataclass
class CompressResult:
    model: ModelProto
    report: CompressReport
    plan: dict[str, Format | None]

    def save(self, path: str | os.PathLike, report_path: str | os.PathLike | None = None) -> tuple[Path, Path]:
        """Write the simulated model and its JSON report (default: next to it, ``.json``)."""
        return save_with_report(self.model, self.report, path, report_path)


def bits_of(fmt: Format | None) -> int:
    if fmt is None:
        return 32
    return fmt.bits


def format_example(plan: Mapping[str, Format | None], ranges: list[GroupRange], category: str) -> str:
    for r in ranges:
        if r.category == category and plan.get(r.group) is not None:
            f = plan[r.group]
            if isinstance(f, PerChannel):
                return f"{f.base_kind}:{f.bits}-bit per channel"
            if isinstance(f, (Fixed, UFixed, Minifloat, Pow2)):
                return str(f) + (" (per group)" if isinstance(f, (Fixed, UFixed)) else "")
    return ""



def weight_bytes(plan: Mapping[str, Format | None], ranges: list[GroupRange]) -> float:
    """Memory of the weights under ``plan`` (float: 32 bits each)."""
    return sum(r.size * bits_of(plan.get(r.group)) / 8 for r in ranges if r.role == "weights")


def compress_report(*, model: str, scheme: str, options, plan: Mapping[str, Format | None],
                    ranges: list[GroupRange], baseline: float, outcome, n_images: int,
                    test: tuple[float | None, float | None, int | None], counts: dict[str, float],
                    seconds: dict[str, float], schemes_tried: dict[str, Any]) -> CompressReport:
    """The report of one compress run (``outcome``: the chosen scheme's search outcome)."""
    weights = [r for r in ranges if r.role == "weights"]
    acts = [r for r in ranges if r.role in ("inputs", "outputs")]
    groups = [GroupReport(r.group, r.role, r.kind, None if plan.get(r.group) is None else str(plan[r.group]),
                          bits_of(plan.get(r.group)), r.size, r.max_abs) for r in ranges]
    return CompressReport(
        model=model, scheme=scheme, metric=options.metric, tolerance=options.tolerance,
        tolerance_mode=options.tolerance_mode, baseline=baseline, final=outcome.final.value, n_images=n_images,
        test_baseline=test[0], test_final=test[1], n_test_images=test[2],
        weight_bytes=weight_bytes(plan, ranges), weight_bytes_fp32=sum(r.size * 4 for r in weights),
        weight_bits_mean=float(np.average([bits_of(plan.get(r.group)) for r in weights],
                                          weights=[r.size for r in weights])) if weights else 32.0,
        activation_bits_mean=float(np.average([bits_of(plan.get(r.group)) for r in acts],
                                              weights=[r.size for r in acts])) if acts else 32.0,
        categories={c: {"bits": ch.bits, "variant": ch.variant, "drop_alone": ch.drop, "groups": ch.groups,
                        "format_example": format_example(plan, ranges, c)}
                    for c, ch in outcome.categories.items()},
        groups=groups, evaluations=counts["evaluations"], plans_scored=int(counts["plans_scored"]),
        screened_out=int(counts["screened_out"]), sessions_built=int(counts["sessions_built"]),
        seconds={k: round(v, 3) for k, v in seconds.items()},
        options=asdict(options), trials=outcome.trials, schemes_tried=schemes_tried,
    )


@dataclass(frozen=True)
class VariantScore:
    """How one alternative of a scheme at its width scored (quantize: fixed and minifloat splits)."""

    category: str
    bits: int
    variant: int | None
    what: str
    value: float
    n: int
    chosen: bool = False


@dataclass(frozen=True, eq=False)
class QuantizeResult:
    model: ModelProto = field(repr=False)
    plan: dict[str, GroupFormat]
    layers: LayerSet
    selected: tuple[str, ...]
    options: QuantizeOptions
    ranges: dict[str, RangeStats] = field(repr=False, default_factory=dict)
    variant_search: tuple[VariantScore, ...] = ()
    metric: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    #: "applied" (the weights' error), "outputs" (the measured output error, ristretto_onnx.output_bias),
    #: "rejected" (auto: neither brings the outputs closer to FP32's on the calibration images) or "off".
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
        if self.variant_search:
            d["variant_search"] = {"metric": self.metric, "scores": [asdict(s) for s in self.variant_search]}
        d["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        return d
