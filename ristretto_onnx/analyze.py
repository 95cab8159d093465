"""Dynamic range analysis (thesis 4.3): how large the numbers of each layer and group are.

Section 4.3 runs images through a trained network and plots, per layer, the magnitudes of the
parameters and of the layer outputs on a log2 scale (fig. 4.1 LeNet, fig. 4.2 CaffeNet): the
weights sit several binades below the outputs, which is why one shared fixed point format fits
neither and dynamic fixed point (ch. 5) gives each group its own integer length.

:func:`analyze_ranges` measures every group (weights from the initializers, inputs and outputs
on calibration data, one pass) and reports range, percentiles, the log2 histogram and, for a
given bit width, the integer/fractional split eq. 5.2 picks with the shares of values it
saturates or rounds to zero. One renderer per output: :meth:`RangeReport.to_dict` (JSON),
:func:`render_table` (terminal) and :func:`plot_histograms` (PNG, like fig. 4.1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx import ModelProto

from ristretto_onnx.data import Dataset, load_dataset
from ristretto_onnx.data.conform import conform
from ristretto_onnx.zoo.inputs import is_zoo, zoo_inputs
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.range_rules import dfp_format, integer_bits
from ristretto_onnx.ranges import measure_groups
from ristretto_onnx.stats import DEFAULT_PERCENTILES, RangeStats


@dataclass(frozen=True)
class GroupAnalysis:
    """One group's measured range and, for ``bits``, the dynamic fixed point split of eq. 5.2."""

    group: str
    role: str
    tensor: str
    stats: RangeStats
    int_bits: int
    frac_bits: int | None
    saturated: float | None
    to_zero: float | None

    def to_dict(self) -> dict[str, Any]:
        d = {"group": self.group, "role": self.role, "tensor": self.tensor,
             "int_bits": self.int_bits, "frac_bits": self.frac_bits,
             "saturated": self.saturated, "rounded_to_zero": self.to_zero}
        d.update(self.stats.to_dict(DEFAULT_PERCENTILES))
        return d


@dataclass(frozen=True)
class LayerRange:
    name: str
    op_type: str
    kind: str
    groups: tuple[GroupAnalysis, ...]

    def group(self, role: str) -> GroupAnalysis | None:
        return next((g for g in self.groups if g.role == role), None)


@dataclass(frozen=True)
class RangeReport:
    """The range analysis of one model on one calibration set."""

    model: str
    data: str
    images: int
    bits: int | None
    fold_bn: bool
    layers: tuple[LayerRange, ...]

    @property
    def shared_int_bits(self) -> int:
        """Integer length one shared fixed point format needs to saturate nothing (ch. 4)."""
        top = max((g.stats.max_abs for layer in self.layers for g in layer.groups if g.role != "bias"),
                  default=0.0)
        return integer_bits(top)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "data": self.data, "images": self.images, "bits": self.bits,
            "fold_bn": self.fold_bn, "shared_int_bits": self.shared_int_bits,
            "percentiles": list(DEFAULT_PERCENTILES),
            "layers": [{"name": l.name, "op_type": l.op_type, "kind": l.kind,
                        "groups": {g.role: g.to_dict() for g in l.groups}} for l in self.layers],
        }


def analyze_ranges(source: str | os.PathLike | ModelProto, data, *, bits: int | None = None,
                   fold_bn: bool = True, include: Sequence[str] = (), exclude: Sequence[str] = (),
                   batch_size: int = 64, threads: int | None = None, model_name: str | None = None,
                   data_name: str | None = None) -> RangeReport:
    """Measure every group of the model's layers on ``data`` (a Dataset) in one pass."""
    if is_zoo(source):  # "zoo:NAME" as on the command line, with its calibration split
        source, _, data = zoo_inputs(source, (), data)
    prepared = prepare(source, fold_bn=fold_bn)
    data = conform(data if isinstance(data, Dataset) else load_dataset(data), prepared.float_model)
    layers = prepared.layers.select(include, exclude)
    ranges = {r.group: r.stats for r in measure_groups(prepared.float_model, layers, data, batch_size=batch_size,
                                                       threads=threads, for_formats=False)}
    out = []
    for layer in layers:
        groups = []
        for g in layer.groups:
            stats = ranges[g.id]
            is_output = g.role == "outputs"
            il = integer_bits(stats.max_abs) - (1 if is_output else 0)
            frac = sat = zero = None
            if bits is not None:
                fmt = dfp_format(stats.max_abs, bits, layer_output=is_output)
                frac = fmt.frac_bits
                sat = stats.fraction_above(fmt.max_value)
                zero = stats.fraction_below(fmt.step / 2)
            groups.append(GroupAnalysis(g.id, g.role, g.tensor, stats, il, frac, sat, zero))
        out.append(LayerRange(layer.name, layer.op_type, layer.kind, tuple(groups)))
    name = model_name or (str(source) if not isinstance(source, ModelProto) else "model")
    return RangeReport(name, data_name or getattr(data, "name", "data"), len(data), bits, fold_bn,
                       tuple(out))


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.2f}%"
    return f"{v:.4g}"


def render_table(report: RangeReport):
    """A rich Table: one row per group, with range, percentiles and the chosen split."""
    from rich.table import Table

    title = (f"Dynamic range of {report.model} on {report.images} images of {report.data}"
             + (f" ({report.bits}-bit dynamic fixed point)" if report.bits else ""))
    table = Table(title=title, show_lines=False)
    for col, justify in (("layer", "left"), ("kind", "left"), ("group", "left"), ("min", "right"),
                         ("max", "right"), ("p99 |x|", "right"), ("p99.9", "right"),
                         ("p99.99", "right"), ("log2 range", "right"), ("IL", "right")):
        table.add_column(col, justify=justify)
    if report.bits:
        for col in ("FL", "saturated", "to zero"):
            table.add_column(col, justify="right")
    for layer in report.layers:
        for i, g in enumerate(layer.groups):
            hist = g.stats.log2_histogram()
            span = f"2^{min(hist)}..2^{max(hist)}" if hist else "-"
            row = [layer.name if i == 0 else "", layer.kind if i == 0 else "", g.role,
                   _fmt(g.stats.min), _fmt(g.stats.max)]
            row += [_fmt(g.stats.percentile(q)) for q in DEFAULT_PERCENTILES]
            row += [span, str(g.int_bits)]
            if report.bits:
                row += [str(g.frac_bits), _fmt(g.saturated, True), _fmt(g.to_zero, True)]
            table.add_row(*row, end_section=i == len(layer.groups) - 1)
    table.caption = (f"IL: integer bits (sign included) of eq. 5.2, layer outputs one fewer; one "
                     f"shared fixed point format would need {report.shared_int_bits} integer bits")
    return table


def plot_histograms(report: RangeReport, path: str | os.PathLike, *, max_layers: int = 48) -> Path:
    """Write a PNG like thesis fig. 4.1: per layer, weights vs layer outputs by log2 magnitude.

    The first panel pools all layers (parameters vs outputs); then one small panel per layer.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report.layers[:max_layers]
    n = len(layers) + 1
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    styles = {"weights": ("tab:blue", "weights"), "outputs": ("tab:orange", "layer outputs")}

    def draw(ax, hists: dict[str, dict[int, int]], title: str) -> None:
        for role, (color, label) in styles.items():
            h = hists.get(role)
            if not h:
                continue
            total = sum(h.values())
            xs = sorted(h)
            ax.step(xs, [100 * h[x] / total for x in xs], where="mid", color=color, label=label)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("log2 |x|", fontsize=7)
        ax.set_ylabel("% of values", fontsize=7)

    pooled: dict[str, dict[int, int]] = {"weights": {}, "outputs": {}}
    for layer in layers:
        for role in pooled:
            g = layer.group(role)
            if g is not None:
                for e, c in g.stats.log2_histogram().items():
                    pooled[role][e] = pooled[role].get(e, 0) + c
    draw(axes[0][0], pooled, "all layers")
    axes[0][0].legend(fontsize=7)
    for k, layer in enumerate(layers, start=1):
        hists = {role: g.stats.log2_histogram() for role in styles if (g := layer.group(role))}
        draw(axes[k // cols][k % cols], hists, layer.name)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"Dynamic range of {Path(report.model).name}: weights vs layer outputs", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
