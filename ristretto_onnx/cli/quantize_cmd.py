"""``ristretto-onnx quantize``: write the simulated model of one fixed configuration."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import typer

from ristretto_onnx.cli.app import app
from ristretto_onnx.cli.backend_options import BackendOption, RayAddressOption, WorkersOption, backend_from_flags
from ristretto_onnx.cli.calib_options import (
    CalibSizeOption, LabelOffsetOption, check_flags, open_calibration, preprocessing_options,
    resolve_input, split_patterns,
)
from ristretto_onnx.cli.outputs import check_outputs, onnx_output, usage_errors
from ristretto_onnx.errors import UsageError
from ristretto_onnx.formats import Minifloat, PerChannel, Pow2, parse_format
from ristretto_onnx.options import QuantizeOptions


@app.command("quantize")
@preprocessing_options
def quantize_command(
    model_in: str = typer.Argument(..., metavar="IN.onnx", help="FP32 model: a path or zoo:NAME."),
    model_out: Path = typer.Argument(..., metavar="OUT.onnx", help="Where to write the simulated model "
                                                                   "(must not exist unless --force)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT (and its report) if they exist."),
    scheme: str = typer.Option(None, help="fixed (one shared format, ch. 4), dfp (per-group fractional "
                                          "length, ch. 5), minifloat (ch. 6) or pow2 (weights only, ch. 7)."),
    bits: int = typer.Option(None, help="Bit width of weights and activations."),
    weight_bits: int = typer.Option(None, help="Bit width of the weights (and biases); default --bits."),
    act_bits: int = typer.Option(None, help="Bit width of layer inputs and outputs; default --bits."),
    format: str = typer.Option(None, "--format", help="Force this format on every group, e.g. fixed:16:8 "
                                                      "(no calibration)."),
    calib: str = typer.Option(None, "--calib", help="Calibration data: .npz, .npy, image folder or zoo:NAME "
                                                    "(default for zoo models: their calibration split)."),
    calib_size: CalibSizeOption = QuantizeOptions.calib_size,
    score_size: int = typer.Option(300, help="fixed, minifloat: images scoring each split of the bit width."),
    layers: list[str] = typer.Option(None, "--layers", help="Only quantize layers matching these regexes "
                                                            "(comma-separated or repeated)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Keep layers matching these regexes in float."),
    no_fold_bn: bool = typer.Option(False, "--no-fold-bn", help="Keep BatchNormalization separate."),
    quantize_bias: bool = typer.Option(False, "--quantize-bias", help="Quantize biases too (weight bits)."),
    exp_min: int = typer.Option(None, help="pow2: smallest weight exponent (default -8, the thesis's "
                                           "window, unless --bits sets the window's width)."),
    exp_max: int = typer.Option(None, help="pow2: largest weight exponent (default -1)."),
    weight_granularity: str = typer.Option("tensor", "--weight-granularity",
                                           help="tensor (one format per layer's weights, as the thesis) or "
                                                "channel (one per output channel: dfp fractional lengths, "
                                                "pow2 windows of --exp-min..--exp-max's width), or auto "
                                                "(per channel for the layers where it lowers the output error)."),
    range_rule: str = typer.Option("auto", "--range-rule",
                                   help="dfp: auto (mse or max, whichever brings the outputs closest to "
                                        "FP32's on the calibration images), mse (least squared error), max "
                                        "(no saturation, the thesis's eq. 5.2) or percentile:P."),
    signed_activations: bool = typer.Option(False, "--signed-activations",
                                            help="dfp: two's complement everywhere (no ufixed after ReLU)."),
    round_twice: bool = typer.Option(False, "--round-twice", help="dfp: inputs keep their own format even "
                                     "where they read another layer's output unchanged (the thesis)."),
    bias_correction: str = typer.Option("auto", "--bias-correction",
                                        help="auto (none, weights or outputs: whichever brings the outputs "
                                             "closest to FP32's on calibration images), weights (each layer's "
                                             "weight error; 'on'), outputs (each layer's measured mean output "
                                             "error) or off."),
    weight_rounding: str = typer.Option("auto", "--weight-rounding",
                                        help="fixed, dfp: auto (nearest or adaptive, each bias-corrected: "
                                             "whichever brings the outputs closest to FP32's on calibration "
                                             "images), adaptive (each layer's weights rounded for its output "
                                             "error on calibration inputs, before bias correction) or nearest."),
    channel_rule: str = typer.Option("output", "--channel-rule",
                                     help="per-channel dfp weights: output (clip a channel only when its output "
                                          "error drops) or range (--range-rule per channel)."),
    equalize: bool = typer.Option(False, "--equalize", help="Cross-layer equalization of Conv -> ReLU(6) -> "
                                                            "Conv pairs first (depthwise networks)."),
    refine: bool = typer.Option(False, "--refine", help="dfp: move each fractional length while the network's "
                                "output on calibration images gets closer to FP32's."),
    report: Path = typer.Option(None, "--report", help="JSON sidecar path (default: OUT with .json)."),
    batch_size: int = typer.Option(256, help="Images per onnxruntime run (the same default in every command)."),
    seed: int = typer.Option(0, help="Seed of the calibration subset."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report to stdout instead of the summary."),
    backend: BackendOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = 2,
    label_offset: LabelOffsetOption = None,
    flags: dict = None,
) -> None:
    """Write OUT.onnx: IN with QuantizeSim on the inputs, weights and outputs of every Conv,
    ConvTranspose, Gemm and MatMul (the thesis data path), and OUT.json with every group's format.

    OUT runs in plain onnxruntime. IN is never modified; OUT appears only when complete.
    """
    from ristretto_onnx.passes.save import save_model, write_text_atomic
    from ristretto_onnx.quantize import quantize

    start = time.perf_counter()
    model_out = onnx_output(model_out)
    report_path = report or model_out.with_suffix(".json")
    with usage_errors():
        options = QuantizeOptions(
            scheme=scheme.lower() if scheme else None, bits=bits, weight_bits=weight_bits, act_bits=act_bits,
            format=parse_format(format) if format else None,
            layers=split_patterns(layers), exclude=split_patterns(exclude), fold_bn=not no_fold_bn,
            quantize_bias=quantize_bias, calib_size=calib_size,
            pow2=None if exp_min is None and exp_max is None else Pow2(-8 if exp_min is None else exp_min,
                                                                       -1 if exp_max is None else exp_max),
            weight_granularity=weight_granularity.lower(), range_rule=range_rule.lower(),
            score_size=score_size, batch_size=batch_size, seed=seed, unsigned=not signed_activations,
            round_once=not round_twice, bias_correction=bias_correction.lower(),
            weight_rounding=weight_rounding.lower(),
            channel_rule=channel_rule.lower(), equalize=equalize, refine=refine,
        )
        check_flags(**flags)
    where = backend_from_flags(backend, ray_address, workers)
    in_path = resolve_input(model_in)
    check_outputs([model_out, report_path], [in_path, calib], force=force)
    data = None
    if options.needs_calibration:
        data = open_calibration(calib, model_in, **flags, label_offset=label_offset)
        if data is None:
            raise UsageError(f"--scheme {options.scheme} needs calibration data: give --calib")
    result = quantize(in_path, options, data, backend=where)
    if data is None and model_in.startswith("zoo:"):  # no calibration data: record the zoo's recipe
        from ristretto_onnx import zoo
        from ristretto_onnx.data.metadata import record

        record(result.model, zoo.get_model(model_in).preprocess)
    sidecar = result.sidecar(input=str(model_in), output=str(model_out),
                             calib=None if data is None else data.name)
    save_model(result.model, model_out)
    write_text_atomic(report_path, json.dumps(sidecar, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(sidecar, indent=2))
        return

    quantized = {g: f for g, f in result.plan.items() if f is not None}
    counts = Counter(f"{f.base_kind}:{f.bits}-bit per channel" if isinstance(f, PerChannel) else str(f)
                     for f in quantized.values())
    top = ", ".join(f"{f} x{n}" for f, n in counts.most_common(4)) + (" ..." if len(counts) > 4 else "")
    typer.echo(f"{len(result.selected)} of {len(result.layers)} layers, {len(quantized)} of "
               f"{len(result.layers.group_ids)} groups quantized: {top or 'none'}")
    for cat in dict.fromkeys(s.category for s in result.variant_search):
        tried = [s for s in result.variant_search if s.category == cat]
        typer.echo(f"{cat} {tried[0].bits}-bit splits ({result.metric}): "
                   + ", ".join(f"{s.what}: {s.value:.3f}" for s in tried)
                   + "; chose " + next(s.what for s in tried if s.chosen))
    for line in flush_warnings(result):
        typer.echo(f"warning: {line}", err=True)
    if result.options.weight_rounding != "nearest":
        typer.echo(f"weight rounding: {result.options.weight_rounding}")
    if result.bias_correction != "off":
        typer.echo(f"bias correction: {result.bias_correction}")
    for s in result.layers.skipped:
        typer.echo(f"skipped {s.op_type} {s.node or '(unnamed)'}: {s.reason}")
    typer.echo(f"wrote {model_out} and {report_path} in {time.perf_counter() - start:.1f}s")


def flush_warnings(result, threshold: float = 0.25) -> list[str]:
    """Groups whose minifloat format rounds most of their values to zero (no silent wrong result).

    The split is chosen on the histograms and scored (as ``compress`` does; eq. 6.2 alone left
    ResNet-20 at 9.9 % top-1), but a category shares one format, so a group far below the others
    can still lose most of its values.
    """
    lost = {}
    for gid, fmt in result.plan.items():
        stats = result.ranges.get(gid) if isinstance(fmt, Minifloat) else None
        if stats is not None and stats.fraction_below(fmt.smallest_positive) > threshold:
            lost[gid] = (fmt, stats.fraction_below(fmt.smallest_positive))
    if not lost:
        return []
    worst = max(lost, key=lambda g: lost[g][1])
    fmt, share = lost[worst]
    return [f"{fmt} rounds more than {100 * threshold:.0f} % of the values to zero in {len(lost)} of "
            f"{sum(f is not None for f in result.plan.values())} groups (worst: {worst}, {100 * share:.0f} %): "
            "the category shares one format; more --bits keep them"]
