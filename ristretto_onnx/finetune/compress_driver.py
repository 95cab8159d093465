"""``compress --finetune``: buy bits with fine-tuning (thesis fig. 9.1, last step; issue 12).

After the post-training search (:func:`ristretto_onnx.compress.compress`) the chosen plan is
fine-tuned. Then, one category at a time (fc weights, conv weights, layer activations), the
category loses one bit, the candidate is fine-tuned starting from the last accepted weights, and
it is kept while the exact simulated model stays within the tolerance on the scored data; the
smallest plan that held is the result. The report says how many bits fine-tuning bought.

Formats for a narrower width come from the same scheme and the same ranges as the search's
(:func:`ristretto_onnx.schemes.make_scheme`), so a fine-tuned plan is one the search could have
chosen, only narrower.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.finetune.trainer import FinetuneOptions, FinetuneResult, finetune
from ristretto_onnx.finetune.writeback import write_back
from ristretto_onnx.report import report_json, save_with_report, weight_bytes

#: The order categories are narrowed in: the most weight memory per bit first.
ORDER = ("fc_weights", "conv_weights", "activations")


@dataclass
class FinetuneCompressReport:
    """The post-training compress report plus what fine-tuning bought."""

    compress: dict
    finetune: dict
    bits_bought: dict[str, dict]
    candidates: list[dict]
    weight_bytes_post_training: float
    weight_bytes: float
    weight_bytes_fp32: float
    seconds: float
    _lines: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        return d

    def to_json(self) -> str:
        return report_json(self.to_dict())

    def summary_lines(self) -> list[str]:
        ft = self.finetune
        lines = list(self._lines)
        lines.append(f"fine-tuned: {ft['headline']}")
        for cat, b in self.bits_bought.items():
            lines.append(f"  {cat:<13} {b['post_training']}-bit -> {b['fine_tuned']}-bit "
                         f"({b['bought']} bit(s) bought by fine-tuning)")
        lines.append(f"weights: {self.weight_bytes / 1024:.1f} KiB after fine-tuning vs "
                     f"{self.weight_bytes_post_training / 1024:.1f} KiB post-training "
                     f"({self.weight_bytes_fp32 / max(self.weight_bytes, 1e-9):.1f}x smaller than FP32); "
                     f"{len(self.candidates)} plans fine-tuned in {self.seconds:.1f} s")
        return lines


@dataclass
class CompressFinetuneResult:
    model: ModelProto
    report: FinetuneCompressReport
    plan: dict
    post_training: object  # the CompressResult of the search
    finetuned: FinetuneResult

    def save(self, path, report_path=None) -> tuple[Path, Path]:
        return save_with_report(self.model, self.report, path, report_path)


def _category_bits(plan: Mapping, ranges, category: str) -> int | None:
    bits = [plan[r.group].bits for r in ranges if r.category == category and plan.get(r.group) is not None]
    return max(bits) if bits else None


def narrower(plan: Mapping, ranges, scheme, category: str) -> dict | None:
    """``plan`` with every group of ``category`` one bit narrower, or None below the scheme's floor."""
    by_bits: dict[int, list] = {}
    for r in ranges:
        if r.category == category and plan.get(r.group) is not None:
            by_bits.setdefault(plan[r.group].bits, []).append(r)
    if not by_bits:
        return None
    new = dict(plan)
    for bits, groups in by_bits.items():
        if bits - 1 < scheme.min_bits:
            return None
        new.update(scheme.formats(groups, bits - 1))
    return new


def compress_finetune(model, data, train_data, *, calib=None, test=None, log=None, metric_fn=None,
                      options=None, finetune_options: FinetuneOptions | None = None,
                      **kwargs) -> CompressFinetuneResult:
    """``compress`` (same arguments), then fine-tune and narrow the plan (module docstring)."""
    from ristretto_onnx.compress import CompressOptions, build_context, compress
    from ristretto_onnx.data import load_dataset
    from ristretto_onnx.passes.pipeline import simulate
    from ristretto_onnx.passes.slots import get_metadata, set_metadata

    if metric_fn is not None:
        raise RistrettoError("compress --finetune scores top1, top5 or fidelity, not a custom metric")
    from ristretto_onnx.finetune.distributed import ranks_from_env

    if ranks_from_env().active:
        raise RistrettoError("compress --finetune runs in one process; under torchrun run finetune on the "
                             "compressed model instead")
    opts = options or CompressOptions(**kwargs)
    fopts = finetune_options or FinetuneOptions()
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    ctx = build_context(model, data, calib=calib, options=opts, log=log)
    post = compress(model, options=opts, context=ctx, test=test, log=log)
    baseline = ctx.scorer.baseline
    tolerance = opts.tolerance * (baseline if opts.tolerance_mode == "relative" else 1.0)
    fopts = FinetuneOptions(**{**asdict(fopts), "tolerance": tolerance, "tolerance_mode": "absolute",
                               "metric": opts.metric})
    scheme = opts.scheme_named(post.report.scheme, ctx.layer_weights)
    ranges = ctx.ranges
    val = load_dataset(iter(ctx.scorer.batches))  # the search's data, already preprocessed

    def tune(sim: ModelProto, what: str) -> FinetuneResult:
        log(f"fine-tuning {what}")
        return finetune(sim, train_data, val, options=fopts, log=log, progress=False, baseline=baseline)

    plan = post.plan
    best = tune(post.model, "the post-training plan")
    candidates = [{"what": "post-training plan", "weight_bytes": weight_bytes(plan, ranges), "before": best.before,
                   "after": best.after, "holds": best.holds}]
    for category in ORDER:
        while True:
            cand = narrower(plan, ranges, scheme, category)
            if cand is None:
                break
            bits = _category_bits(cand, ranges, category)
            sim = write_back(simulate(ctx.prepared, cand), best.weights)
            result = tune(sim, f"{category} at {bits} bits")
            candidates.append({"what": f"{category} {bits}-bit", "weight_bytes": weight_bytes(cand, ranges),
                               "before": result.before, "after": result.after, "holds": result.holds})
            log(f"{category} at {bits} bits: {result.headline}")
            if not result.holds:
                break
            plan, best = cand, result
    bought = {}
    for category in ORDER:
        b0, b1 = _category_bits(post.plan, ranges, category), _category_bits(plan, ranges, category)
        if b0 is not None:
            bought[category] = {"post_training": b0, "fine_tuned": b1, "bought": b0 - b1}
    final = ModelProto()
    final.CopyFrom(best.model)
    summary = json.loads(get_metadata(post.model, "ristretto.compress") or "{}")
    summary.update({"final": round(best.after, 6), "weight_bytes": weight_bytes(plan, ranges), "finetuned": True})
    set_metadata(final, "ristretto.compress", json.dumps(summary, separators=(",", ":")))
    report = FinetuneCompressReport(
        compress=post.report.to_dict(), finetune=best.to_dict(), bits_bought=bought, candidates=candidates,
        weight_bytes_post_training=weight_bytes(post.plan, ranges), weight_bytes=weight_bytes(plan, ranges),
        weight_bytes_fp32=post.report.weight_bytes_fp32, seconds=round(time.perf_counter() - t0, 3),
        _lines=post.report.summary_lines())
    return CompressFinetuneResult(final, report, plan, post, best)



def run_from_cli(model, data, train_data, epochs: int, lr: float, **kwargs) -> CompressFinetuneResult:
    """``compress --finetune``: the checks the command needs, then :func:`compress_finetune`."""
    from ristretto_onnx.finetune.torch_dep import require_torch

    require_torch()
    if train_data is None:
        raise RistrettoError("--finetune needs --train-data (labelled training images)")
    return compress_finetune(model, data, train_data, finetune_options=FinetuneOptions(epochs=epochs, lr=lr),
                             **kwargs)
