"""Render a :class:`~ristretto_onnx.export.hw_report.HardwareReport`: Markdown, JSON, PNG.

One function per form; the numbers come only from the report object, so the three forms agree.
"""

from __future__ import annotations

import json
from pathlib import Path

from ristretto_onnx.export.hw_report import HardwareReport, LayerReport
from ristretto_onnx.passes.save import write_text_atomic

ROLES = ("inputs", "weights", "bias", "outputs")


def _kib(nbytes: float) -> str:
    return f"{nbytes / 1024:,.1f} KiB"


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.1f}x" if a else "-"


def to_markdown(report: HardwareReport) -> str:
    """Markdown tables: formats per layer, arithmetic per layer, then totals."""
    lines = [f"# Hardware report: {report.model or 'model'}", "", "## Formats per layer", "",
             "| layer | op | " + " | ".join(ROLES) + " |", "|---|---|" + "---|" * len(ROLES)]
    for layer in report.layers:
        cells = []
        for role in ROLES:
            t = layer.tensor(role)
            cells.append("-" if t is None else (f"float" if t.format == "float" else f"{t.kind} {t.bits}b, {t.window}"))
        lines.append(f"| {layer.name} | {layer.op_type} | " + " | ".join(cells) + " |")
    lines += ["", "## Arithmetic per layer (per image)", "",
              "m x n: layer input bits x weight bits; area: multiplier area / 32x32; acc: accumulator "
              "bits m+n+ceil(log2 K); params: weights + biases; acts: input / output buffer.", "",
              "| layer | MACs | m x n | K | area | acc | params | acts in/out |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
    for layer in report.layers:
        lines.append(_layer_row(layer))
    lines += ["", "## Totals (per image)", ""]
    lines += [f"- {k}: {v}" for k, v in _totals(report).items()]
    return "\n".join(lines) + "\n"


def _layer_row(layer: LayerReport) -> str:
    acc = "-" if layer.accumulator_bits is None else str(layer.accumulator_bits)
    params = layer.memory_bits(("weights", "bias")) / 8
    acts = " / ".join(f"{layer.memory_bits((r,)) / 8 / 1024:,.1f}" for r in ("inputs", "outputs")) + " KiB"
    area = "shift" if layer.shift_only else f"{layer.multiplier_area:.4f}"
    return (f"| {layer.name} | {layer.macs:,} | {layer.mac_bucket} | {layer.accumulation_length} | {area} | "
            f"{acc} | {_kib(params)} | {acts} |")


def _totals(report: HardwareReport) -> dict[str, str]:
    buckets = ", ".join(f"{k}: {v:,} ({100 * v / report.total_macs:.1f} %)" for k, v in report.mac_buckets.items())
    out = {
        "MACs": f"{report.total_macs:,} ({buckets})",
        "weights": f"{_kib(report.weight_bytes)} vs {_kib(report.weight_bytes_fp32)} FP32 "
                   f"({_ratio(report.weight_bytes, report.weight_bytes_fp32)})",
        "weights + biases": f"{_kib(report.parameter_bytes)} vs {_kib(report.parameter_bytes_fp32)} FP32 "
                            f"({_ratio(report.parameter_bytes, report.parameter_bytes_fp32)})",
        "activations (layer inputs + outputs)": f"{_kib(report.activation_bytes)} vs "
                                                f"{_kib(report.activation_bytes_fp32)} FP32 "
                                                f"({_ratio(report.activation_bytes, report.activation_bytes_fp32)})",
        "largest activation buffer": _kib(report.largest_activation_buffer_bytes),
        "mean multiplier area (MAC-weighted, vs 32x32)": f"{report.multiplier_area:.4f}",
        "widest accumulator": "-" if report.max_accumulator_bits is None else f"{report.max_accumulator_bits} bits",
    }
    fit = report.sram_fit
    if fit is not None:
        yes = {True: "fits", False: "does not fit"}
        out[f"SRAM {_kib(report.sram_bytes)}"] = (f"weights+biases {yes[fit['weights']]}, largest activation "
                                                  f"buffer {yes[fit['largest_activation_buffer']]}, both together "
                                                  f"{yes[fit['both']]}")
    acc = report.accuracy
    out["accuracy"] = ("not recorded (only compress scores the model)" if acc is None else
                       f"{acc.metric} {acc.baseline:.4f} -> {acc.final:.4f} (drop {acc.drop:+.4f}, "
                       f"tolerance {acc.tolerance:g}, scheme {acc.scheme})")
    return out


def to_dict(report: HardwareReport) -> dict:
    """The JSON form: every layer, every tensor, and the totals as numbers."""
    acc = report.accuracy
    return {
        "model": report.model,
        "layers": [{
            "name": layer.name, "op_type": layer.op_type, "kind": layer.kind, "macs": layer.macs,
            "mac_bucket": layer.mac_bucket, "accumulation_length": layer.accumulation_length,
            "input_bits": layer.input_bits, "weight_bits": layer.weight_bits, "shift_only": layer.shift_only,
            "multiplier_area": layer.multiplier_area, "accumulator_bits": layer.accumulator_bits,
            "tensors": [{"role": t.role, "tensor": t.tensor, "format": t.format, "kind": t.kind, "bits": t.bits,
                         "window": t.window, "elements": t.elements, "memory_bits": t.memory_bits}
                        for t in layer.tensors],
        } for layer in report.layers],
        "totals": {
            "macs": report.total_macs, "mac_buckets": report.mac_buckets,
            "weight_bits": report.weight_bits, "bias_bits": report.bias_bits,
            "weight_bytes": report.weight_bytes, "weight_bytes_fp32": report.weight_bytes_fp32,
            "parameter_bytes": report.parameter_bytes, "parameter_bytes_fp32": report.parameter_bytes_fp32,
            "activation_bytes": report.activation_bytes, "activation_bytes_fp32": report.activation_bytes_fp32,
            "largest_activation_buffer_bytes": report.largest_activation_buffer_bytes,
            "multiplier_area": report.multiplier_area, "max_accumulator_bits": report.max_accumulator_bits,
            "sram_bytes": report.sram_bytes, "sram_fit": report.sram_fit,
        },
        "accuracy": None if acc is None else {"metric": acc.metric, "baseline": acc.baseline, "final": acc.final,
                                              "drop": acc.drop, "tolerance": acc.tolerance, "scheme": acc.scheme},
    }


def write_json(report: HardwareReport, path: Path) -> Path:
    return write_text_atomic(path, json.dumps(to_dict(report), indent=2) + "\n")


def write_plot(report: HardwareReport, path: Path) -> Path:
    """A PNG: MACs per layer coloured by m x n bucket, and memory per layer against FP32."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer.name for layer in report.layers]
    x = range(len(names))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(names)), 8), sharex=True)
    buckets = list(report.mac_buckets)
    colors = plt.get_cmap("tab10")
    for i, bucket in enumerate(buckets):
        ax1.bar(x, [layer.macs if layer.mac_bucket == bucket else 0 for layer in report.layers],
                color=colors(i % 10), label=f"{bucket} bits")
    ax1.set_ylabel("MACs per image")
    ax1.legend(title="input x weight")
    ax1.set_title(f"{report.model or 'model'}: {report.total_macs:,} MACs, "
                  f"weights {_kib(report.weight_bytes)} vs {_kib(report.weight_bytes_fp32)} FP32")
    width = 0.4
    ax2.bar([i - width / 2 for i in x], [layer.memory_bits(("weights", "bias")) / 8 / 1024 for layer in report.layers],
            width, label="weights + biases")
    ax2.bar([i + width / 2 for i in x], [layer.memory_bits(("outputs",)) / 8 / 1024 for layer in report.layers],
            width, label="output activations")
    if report.sram_bytes is not None:
        ax2.axhline(report.sram_bytes / 1024, color="red", linestyle="--", label="SRAM")
    ax2.set_ylabel("KiB")
    ax2.legend()
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
