"""Render the results of bench/reproduce.py as docs/RESULTS.md and the figure PNGs.

Only formatting lives here: every number comes from the results dict the measurement wrote
(also saved as bench/out/reproduce.json, so ``reproduce.py --render`` can redo the page without
measuring), and thesis numbers come from :mod:`bench.thesis_reference`, always in columns
labelled "thesis". Sentences that state a finding are built from the measured numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import reproduce_finetune
from bench import thesis_reference as thesis
from bench.common import md_table, pct, signed_pts

CATEGORY_NAMES = {"activations": "layer outputs", "conv_weights": "conv weights", "fc_weights": "fc weights"}
FIGURE_NUMBER = {"LeNet": "8.1", "CIFAR-10 full": "8.2", "CaffeNet": "8.3"}
SCHEME_STYLE = {"fixed": ("static fixed point", "tab:red", "s"), "dfp": ("dynamic fixed point", "tab:blue", "o"),
                "minifloat": ("minifloat", "tab:green", "^")}


def _nets(results: dict) -> list[tuple[str, dict]]:
    return list(results["networks"].items())


def _label(r: dict) -> str:
    return r["spec"]["label"]


def _acc_delta(acc: float, ref: float) -> str:
    return f"{pct(acc)} ({signed_pts(acc - ref)})"


def _thesis_ref(ref: dict) -> str:
    return f"{pct(ref['before'])} ({pct(ref['finetuned'])})"


def _widths_key(d: dict, b: int):
    return d[b] if b in d else d[str(b)]  # JSON turns int keys into strings


# ---------------------------------------------------------------------------------------------
# Networks


def section_networks(results: dict) -> str:
    rows = []
    for name, r in _nets(results):
        n, fp = r["n"], r["fp32_on"]
        rows.append([f"`{name}`", r["spec"]["thesis"],
                     *[f"{n[role]} ({pct(fp[role])})" for role in ("table", "search", "sweep", "minifloat")],
                     r["n_calib"]])
    return md_table(["zoo model", "stands in for (thesis)", "table set: images (FP32 top-1)", "search set",
                     "sweep set", "minifloat set", "calibration images"], rows)


NOTES_NETWORKS = """\
- **Not available:** the thesis's CaffeNet and GoogLeNet are not in the zoo. SqueezeNet 1.1 on the
  1,000-image ImageNet sample stands in for CaffeNet (tables 4.1, 5.1, 6.1, 7.1, figure 8.3) and for
  the thesis's SqueezeNet 1.0 (table 5.2). ResNet-20 stands in for Caffe's "CIFAR-10 full" (3 conv +
  1 fc layer with LRN). They are different networks: compare where accuracy breaks, not the values.
- **CIFAR-10 pixels:** the zoo's CIFAR-10 images are a JPEG copy (quality about 75), which is the
  likely reason ResNet-20 scores about 81 % here against 91.7 % published.
- **ImageNet sample:** one image per class, easier than the validation set (60.9 % here, 56.3 %
  published on ILSVRC-2012 val). There is no other ImageNet data, so the **calibration images are
  200 of the same 1,000 test images** (a seeded subset): calibration and test overlap for SqueezeNet.
- **Calibration:** LeNet calibrates on a seeded subset of the MNIST training set, ResNet-20 on one of
  the zoo's CIFAR-10 training file. Our range analysis (max |x| per group) and onnxruntime's
  calibrators see exactly the same images.
- **Evaluation sets:** the table set is the whole test set. Searches (`compress`, split choices),
  bit-width sweeps and minifloat measurements use seeded subsets of it where the table above says so
  (smaller sets are subsets of larger ones), to keep the run under 30 minutes: minifloat simulation
  is the slowest (see the throughput table). Every table says which set a number is on.
- **Fine-tuning:** tables 4.1-7.1 compare ours without fine-tuning with the thesis's values
  *before* fine-tuning (in brackets in the thesis; first here, the fine-tuned value in brackets);
  the section "Fine-tuned" after table 7.1 fine-tunes tables 5.2, 6.1 and 7.1 (thesis 9.3)."""


# ---------------------------------------------------------------------------------------------
# Tables


TEXT_5_1 = """\
One part of every conv/fc layer in dynamic fixed point, the rest in FP32 (thesis table 5.1, no
fine-tuning in either). "Layer outputs" is our `activations` category: every conv/fc layer's input
and output (the thesis's layer outputs are the next layer's inputs). Each group gets its own
fractional length by eq. 5.2 from its calibration maximum (layer outputs one integer bit fewer);
biases stay in float throughout. Values: top-1 in %, on the table set."""


def section_5_1(results: dict) -> str:
    widths = thesis.TABLE_5_1_WIDTHS
    rows = []
    for name, r in _nets(results):
        ref = thesis.TABLE_5_1[r["spec"]["thesis"]]
        for row in r["t51"]:
            cat = row["category"]
            if row["accuracy"] is None:
                ours = ["(no fc layers)"] + [""] * (len(widths) - 1)
            else:
                ours = [pct(_widths_key(row["accuracy"], b)) for b in widths]
            rows.append([f"{_label(r)} (FP32 {pct(r['fp32'])}, {r['n']['table']} images)", CATEGORY_NAMES[cat],
                         *ours, f"{r['spec']['thesis']} (FP32 {pct(ref['fp32'], 1)})",
                         *[pct(v, 1) for v in ref[cat]]])
    head = ["network (ours)", "part"] + [f"ours {b}-bit" for b in widths] + ["thesis network"] + \
        [f"thesis {b}-bit" for b in widths]
    return md_table(head, rows)


TEXT_4_1 = """\
Static fixed point: one format Q*IL.FL* (IL counts the sign bit, eq. 4.1) for every layer output and
parameter (thesis 4.4.1). The split is chosen as the thesis does (try partitions, keep the most
accurate): start at the integer length that saturates nothing and move the binary point right while
accuracy improves, on the search set; the chosen format is then scored on the table set. The
thesis's widths: 8 bits for LeNet, 16 for CIFAR-10 and CaffeNet."""


def section_4_1(results: dict) -> str:
    rows = []
    for name, r in _nets(results):
        t, ref = r["t41"], thesis.TABLE_4_1[r["spec"]["thesis"]]
        tried = ", ".join(f"{q}: {pct(v)}" for q, v in t["tried"].items())
        rows.append([_label(r), f"{t['bits']}", f"{t['q']}", _acc_delta(t["table_accuracy"], r["fp32"]),
                     f"{tried} ({t['on']} images)", r["spec"]["thesis"], ref["format"], _thesis_ref(ref),
                     signed_pts(ref["before"] - ref["fp32"])])
    return md_table(["network (ours)", "bits", "best split (ours)", "ours top-1 (Δ)", "splits tried (search set)",
                     "thesis network", "thesis format", "thesis before FT (after)", "thesis Δ before FT"], rows)


def _cats(run: dict) -> str:
    parts = []
    for cat, c in run["categories"].items():
        bits = "float" if c["bits"] is None else f"{c['bits']}-bit"
        ex = f" (`{c['example'].replace(' (per group)', '')}`…)" if c.get("example") else ""
        parts.append(f"{CATEGORY_NAMES.get(cat, cat)} {bits}{ex}")
    return "; ".join(parts)


def compress_table(results: dict, scheme: str) -> str:
    """What ``compress --scheme S --tolerance 0.01`` found, on the search set and the table set."""
    rows, skipped = [], []
    for name, r in _nets(results):
        run = r["compress"].get(scheme)
        if run is None:
            skipped.append(_label(r))
            continue
        ratio = run["weight_bytes_fp32"] / run["weight_bytes"] if run["weight_bytes"] else float("inf")
        rows.append([_label(r), _cats(run),
                     f"{_acc_delta(run['search_final'], run['search_baseline'])}, {run['search_images']} images",
                     _acc_delta(run["table_accuracy"], r["fp32"]),
                     f"{run['weight_bytes'] / 1024:.1f} KiB ({ratio:.1f}x smaller)"])
    text = f"`compress --scheme {scheme} --tolerance 0.01` (absolute; searched on the "
    text += ("minifloat set" if scheme == "minifloat" else "search set") + ", its plan then scored on the table set):"
    if rows:
        text += "\n\n" + md_table(["network", "formats found", "searched: top-1 (Δ)", "table set: top-1 (Δ)",
                                   "weights"], rows)
    notes = compress_notes(results, scheme)
    if notes:
        text += "\n\n" + notes
    if skipped:
        text += (f"\n\nNot run for {', '.join(skipped)}: left out to keep the run under 30 minutes "
                 "(its cost per evaluation is in the performance section).")
    return text


def compress_notes(results: dict, scheme: str) -> str:
    """What a reader should not miss in a compress table: categories the search left in float,
    and plans whose drop on the table set exceeds the tolerance met on the (smaller) search set."""
    notes = []
    for name, r in _nets(results):
        run = r["compress"].get(scheme)
        if run is None:
            continue
        floats = [CATEGORY_NAMES.get(c, c) for c, v in run["categories"].items() if v["bits"] is None]
        if floats:
            notes.append(f"{_label(r)}: {' and '.join(floats)} stay float (the search found no width up to "
                         f"the scheme's maximum that held the tolerance).")
        drop = r["fp32"] - run["table_accuracy"]
        if drop > run["tolerance"] + 1e-9:
            notes.append(f"{_label(r)}: on the table set the drop is {100 * drop:.2f} points, more than the "
                         f"{100 * run['tolerance']:.0f} point the search held on its {run['search_images']} images "
                         "(their sampling noise is about ±" + f"{100 * _se(r['fp32'], run['search_images']):.1f} points).")
    return " ".join(notes)


TEXT_5_2 = """\
Dynamic fixed point for all three parts at the thesis's widths (layer outputs / conv weights / fc
weights), on the table set. "eq. 5.2 ranges" is the thesis's rule (integer length from the largest
calibration value, layer outputs one bit fewer); "MSE ranges" is the range rule `compress` uses by
default (per group, the fractional length with the least expected squared error on the calibration
histogram, so rare outliers may saturate). The thesis's CaffeNet and GoogLeNet rows have no network
in the zoo.
For reference, the Ristretto blog post reports SqueezeNet 57.68 % -> 57.21 % in 8-bit dynamic fixed
point (it does not say whether that is before or after fine-tuning)."""


def section_5_2(results: dict) -> str:
    by_name = {row["network"]: row for row in thesis.TABLE_5_2}
    rows, used = [], set()
    for name, r in _nets(results):
        for row in r["t52"]:
            ref = by_name[row["thesis"]]
            used.add(row["thesis"])
            bits = "/".join(str(b) for b in row["bits"]) + ("" if r["has_fc"] else " (no fc)")
            mse = _acc_delta(row["accuracy_mse"], r["fp32"]) if "accuracy_mse" in row else "—"
            rows.append([_label(r), bits, pct(r["fp32"]), _acc_delta(row["accuracy"], r["fp32"]), mse,
                         row["thesis"], pct(ref["fp32"]), _thesis_ref(ref), signed_pts(ref["before"] - ref["fp32"])])
    for ref in thesis.TABLE_5_2:
        if ref["network"] not in used:
            rows.append(["not in the zoo", "/".join(map(str, ref["bits"])), "—", "—", "—", ref["network"],
                         pct(ref["fp32"]), _thesis_ref(ref), signed_pts(ref["before"] - ref["fp32"])])
    text = md_table(["network (ours)", "bits", "ours FP32", "ours top-1 (Δ), eq. 5.2 ranges",
                     "ours, MSE ranges (compress default)", "thesis network", "thesis FP32",
                     "thesis before FT (after)", "thesis Δ before FT"], rows)
    for name, r in _nets(results):
        for row in r["t52"]:
            if row.get("diagnosis"):
                text += "\n\n" + diagnosis_text(r, row["diagnosis"], "/".join(map(str, row["bits"])),
                                                f"more than a point further below FP32 than the thesis's {row['thesis']}")
    return text


def _se(acc: float, n: int) -> float:
    """One binomial standard error of an accuracy on ``n`` images (a rough noise scale)."""
    return (max(acc * (1 - acc), 1e-9) / max(n, 1)) ** 0.5


def diagnosis_text(r: dict, diag: list[dict], config: str, why: str) -> str:
    """A diagnosis table plus the sentence its numbers support (or a note that they are noise)."""
    base, n, fp = diag[0]["accuracy"], diag[0]["on"], diag[0].get("fp32")
    rows = [[d["variant"], pct(d["accuracy"]), signed_pts(d["accuracy"] - base)] for d in diag]
    head = (f"Why {_label(r)} at {config} is {why} ({n} images"
            + (f", FP32 {pct(fp)} on them" if fp is not None else "") + "; each variant changes one thing):")
    text = head + "\n\n" + md_table(["variant", "top-1", "vs as configured"], rows) + "\n\n"
    noise = 2 * _se(base, n)
    if fp is not None and fp - base < noise:
        return text + (f"On these images the configuration is within noise of FP32 (loss "
                       f"{100 * (fp - base):.2f} points, two standard errors about {100 * noise:.1f}), so the "
                       "variants cannot single out a cause.")
    weights_only, acts_only = diag[1]["accuracy"], diag[2]["accuracy"]
    part = "the activations" if acts_only < weights_only else "the weights"
    fix = max(diag[3:], key=lambda d: d["accuracy"])
    return text + (f"Most of the loss comes from {part} (weights alone {pct(weights_only)}, activations alone "
                   f"{pct(acts_only)}). The single change that recovers most: *{fix['variant']}* "
                   f"({signed_pts(fix['accuracy'] - base)} points; differences below about {100 * noise:.1f} "
                   "points are noise).")


TEXT_6_1 = """\
8-bit minifloat (1 sign bit, E exponent bits, 7 - E mantissa bits, no denormals, bias 2^(E-1) - 1)
for all layer outputs and parameters. The split is chosen by accuracy (the thesis: "Ristretto
automatically searches for the best balance between exponent and mantissa bits", 6.3), starting at
the package's histogram rule (least relative quantization error over all groups). Eq. 6.2 alone
(shown for reference) only keeps the largest value from saturating; on our LeNet it asks for 3
exponent bits, whose smallest normal number is 2^-2 = 0.25, above most of its weights (without
denormals they flush to zero). All on the minifloat set."""


def section_6_1(results: dict) -> str:
    rows = []
    for name, r in _nets(results):
        t, ref = r["t61"], thesis.TABLE_6_1[r["spec"]["thesis"]]
        tried = ", ".join(f"{k}: {pct(v)}" for k, v in t["tried"].items())
        rows.append([_label(r), f"{t['exp_bits']}e/{t['mant_bits']}m", f"{t['eq62_exp_bits']}e",
                     f"{t['start_exp_bits']}e ({t['start_rule']})",
                     f"{_acc_delta(t['accuracy'], r['fp32_on']['minifloat'])}, {t['on']} images", tried,
                     r["spec"]["thesis"], f"{ref['split'][0]}e/{ref['split'][1]}m", _thesis_ref(ref),
                     signed_pts(ref["before"] - ref["fp32"])])
    return md_table(["network (ours)", "split chosen", "eq. 6.2", "start", "ours top-1 (Δ)", "splits tried",
                     "thesis network", "thesis split", "thesis before FT (after)", "thesis Δ before FT"], rows)


TEXT_7_1 = """\
Weights rounded to ±2^e with e in [-8, -1] (thesis 7.2: 4 bits per weight), layer outputs in float
(thesis fig. 7.2), on the table set. The window's top, 2^-1, suits weights below about 0.75; the
column "above 2^-0.5" counts layers whose largest weight would round to 2^0 or more and is clipped
(ResNet-20's weights have BatchNormalization folded in). The Ristretto blog reports LeNet 99.15 %
-> 99.15 % and AlexNet 56.90 % -> 53.18 % with multiplier-free arithmetic."""


def section_7_1(results: dict) -> str:
    rows = []
    for name, r in _nets(results):
        t, ref = r["t71"], thesis.TABLE_7_1[r["spec"]["thesis"]]
        rows.append([_label(r), f"`{t['window']}`", _acc_delta(t["accuracy"], r["fp32"]),
                     f"{t['layers_clipped_at_top']} of {t['layers']} (max |w| {t['largest_weight']:.2f})",
                     r["spec"]["thesis"], _thesis_ref(ref), signed_pts(ref["before"] - ref["fp32"])])
    return md_table(["network (ours)", "weights", "ours top-1 (Δ)", "layers with weights above 2^-0.5",
                     "thesis network", "thesis before FT (after)", "thesis Δ before FT"], rows)


# ---------------------------------------------------------------------------------------------
# Figures


TEXT_FIG = """\
All parts (layer outputs, conv and fc weights) at the same width, without fine-tuning, as in the
thesis's chapter 8: static fixed point with the best split at each width (chosen on the same set,
as in table 4.1), dynamic fixed point by eq. 5.2, minifloat with the histogram rule's exponent
width (see table 6.1). Widths go down from 16 bits and a scheme stops once its accuracy is within
2 points of chance: lower widths are not measured (shown as ·, as are widths left out of a
scheme's list for time: SqueezeNet's minifloat line has 12, 8, 6, 5 and 4 bits). "any split": all
integer lengths tried were at chance. Fixed and dynamic fixed point are on the sweep set, minifloat
on the minifloat set."""


def _sweep_sets(r: dict) -> str:
    n = r["n"]
    return f"{n['sweep']} images" if n["sweep"] == n["minifloat"] else f"{n['sweep']} images (minifloat {n['minifloat']})"


def plot_sweep(r: dict, path: Path) -> Path:
    """One figure per network: top-1 against bit width for the three schemes (figs. 8.1-8.3)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for scheme, pts in r["sweep"].items():
        label, color, marker = SCHEME_STYLE[scheme]
        ax.plot([p["bits"] for p in pts], [100 * p["accuracy"] for p in pts], marker=marker, color=color,
                label=f"{label} (ours)")
    fp_sweep, fp_mini = r["fp32_on"]["sweep"], r["fp32_on"]["minifloat"]
    two_sets = r["n"]["sweep"] != r["n"]["minifloat"]
    ax.axhline(100 * fp_sweep, color="gray", linestyle="--", linewidth=1,
               label=f"FP32 (ours, {r['n']['sweep']} images)" if two_sets else "FP32 (ours)")
    if two_sets:
        ax.axhline(100 * fp_mini, color="tab:green", linestyle=":", linewidth=1,
                   label=f"FP32 (ours, the {r['n']['minifloat']} minifloat images)")
    quoted = [(b, v) for net, _, b, v, _ in thesis.FIGURE_8_TEXT if net == r["spec"]["thesis"] and v is not None]
    if quoted:
        ax.scatter([b for b, _ in quoted], [100 * v for _, v in quoted], facecolors="none", edgecolors="black",
                   s=60, zorder=3, label=f"thesis {r['spec']['thesis']} minifloat (quoted from ch. 8.3)")
    ax.set_xlabel("bit width (layer outputs, conv and fc weights)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{_label(r)}, {_sweep_sets(r)} (cf. thesis fig. {FIGURE_NUMBER[r['spec']['thesis']]})", fontsize=9)
    ax.set_xticks(sorted({p["bits"] for pts in r["sweep"].values() for p in pts}))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def section_figures(results: dict, out: Path) -> str:
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    parts = []
    for name, r in _nets(results):
        path = plot_sweep(r, img / f"fig8-{name}.png")
        widths = sorted({p["bits"] for pts in r["sweep"].values() for p in pts}, reverse=True)
        cells = {s: {p["bits"]: p for p in pts} for s, pts in r["sweep"].items()}
        rows = []
        for scheme in ("fixed", "dfp", "minifloat"):
            row = [SCHEME_STYLE[scheme][0]]
            for b in widths:
                p = cells.get(scheme, {}).get(b)
                row.append("·" if p is None else pct(p["accuracy"], 1) + (f" {p['detail']}" if p.get("detail") else ""))
            rows.append(row)
        fig_no = FIGURE_NUMBER[r["spec"]["thesis"]]
        parts.append(f"### {_label(r)} (cf. thesis figure {fig_no}, {r['spec']['thesis']})\n\n"
                     f"![{_label(r)}: top-1 against bit width](img/{path.name})\n\n"
                     + md_table(["scheme"] + [f"{b}-bit" for b in widths], rows))
    quoted = "\n".join(f"- {net}, {scheme}, {bits}-bit: " + (f"{pct(v)} %. " if v is not None else "") + note
                       for net, scheme, bits, v, note in thesis.FIGURE_8_TEXT)
    return ("\n\n".join(parts) + "\n\nThe thesis's figures 8.1-8.3 are plots; its text states only these points "
            "(reference, not measured here):\n\n" + quoted)


# ---------------------------------------------------------------------------------------------
# onnxruntime


TEXT_ORT = """\
onnxruntime's static quantizer as a user of stock onnxruntime would run it: `quant_pre_process`
(shape inference, BatchNormalization folded into the convolutions, as our pipeline does), then
`quantize_static` in QDQ format with uint8 activations (QUInt8, asymmetric, with a zero point) and
int8 symmetric weights (QInt8), `reduce_range` off (onnxruntime's advice for x86 CPUs with VNNI,
which this EPYC has), per tensor and per channel, with MinMax, Entropy and Percentile (99.999)
calibration. The calibration data reader feeds exactly the calibration batches our range analysis
used (50 images per batch: the histogram calibrators need equal batch shapes). Ours: 8-bit dynamic
fixed point for all parts (signed, power-of-two scales), per tensor, and per output channel for
weights (`weight_granularity="channel"`), each with the thesis's eq. 5.2 ranges and with the MSE
range rule `compress` uses by default (see table 5.2). Both are scored by a plain onnxruntime session over the
table set. "quantize s" is calibration plus rewriting (ours: preparation, range analysis and
building the simulated model; theirs: `quant_pre_process` plus `quantize_static`); "evaluate s"
is one pass over the table set.

How the two differ, which the diagnosis tables below measure where ours loses:

1. **Scale:** onnxruntime's step is (max - min) / 255, any float; ours is a power of two, 2^-FL,
   the smallest one for which the range fits, so up to twice as coarse (a hardware shift instead
   of a multiplication: the point of dynamic fixed point).
2. **Signed codes after ReLU:** onnxruntime drops a ReLU that follows a convolution and quantizes
   the convolution's output as uint8 over [0, max] instead (its quantized ResNet-20 has no ReLU
   node left): one rounding per tensor, all 256 codes on values that survive the ReLU. Ours
   quantizes the layer output before the ReLU (signed, the thesis's fig. 2.9 data path) and the
   next layer's input again; for non-negative tensors half of the signed codes are never used.
3. **Ranges:** eq. 5.2 takes the integer length from the largest calibration value (layer outputs one
   bit fewer, while the next layer's input gets the full length: a value is rounded twice with
   different steps). One outlier can thus cost every other value a bit; the MSE rule and
   onnxruntime's Entropy/Percentile calibration trade a few saturated outliers for finer steps.
4. **Biases:** onnxruntime stores them as int32 at the product scale; ours stay float (the thesis
   does not quantize biases)."""


def section_ort(results: dict) -> str:
    parts = []
    for name, r in _nets(results):
        o = r["ort"]
        n = r["n"]["table"]
        rows = [["FP32", pct(o["fp32"]), "", "", ""]]
        for row in o["rows"]:
            if "error" in row:
                rows.append([row["label"], f"failed: {row['error']}", "", "", ""])
                continue
            rows.append([row["label"], pct(row["accuracy"]), signed_pts(row["accuracy"] - o["fp32"]),
                         f"{row['quantize_seconds']:.1f}", f"{row['eval_seconds']:.1f} ({n / row['eval_seconds']:.0f} img/s)"])
        parts.append(f"### {_label(r)} ({n} test images, {r['n_calib']} calibration images)\n\n"
                     + md_table(["method", "top-1", "Δ vs FP32", "quantize s", "evaluate s"], rows)
                     + "\n\n" + ort_verdict(r))
        if o["diagnosis"]:
            parts.append(diagnosis_text(r, o["diagnosis"], "8/8/8 per tensor", "below onnxruntime's per-tensor int8"))
    parts.append(TEXT_THROUGHPUT + "\n\n" + throughput_table(results))
    return "\n\n".join(parts)


def _ours(o: dict, granularity: str, rule: str = "max") -> dict | None:
    return next((x for x in o["rows"] if x.get("granularity") == granularity and x.get("rule", "max") == rule
                 and "accuracy" in x), None)


def _compare(diff: float, se: float) -> str:
    if diff >= 0:
        return "at least as accurate as"
    return "within noise of" if -diff < 2 * se else "less accurate than"


def ort_verdict(r: dict) -> str:
    """Is our per-tensor 8-bit at least as accurate as onnxruntime's per-tensor int8? One sentence
    per range rule, against onnxruntime's best per-tensor setting and its MinMax calibration."""
    o, n = r["ort"], r["n"]["table"]
    pt = [x for x in o["rows"] if x.get("config", "").startswith("per-tensor") and "accuracy" in x]
    if not pt:
        return ""
    best = max(pt, key=lambda x: x["accuracy"])
    minmax = next((x for x in pt if x["config"] == "per-tensor MinMax"), best)
    out = []
    for rule, name in (("mse", "MSE ranges (the compress default)"), ("max", "eq. 5.2 ranges (the thesis)"),
                       ("auto, issue-15 rules", "quantize's defaults (range rule auto and the issue-15 rules)")):
        ours = _ours(o, "tensor", rule)
        if ours is None:
            continue
        se = _se(ours["accuracy"], n)
        d_best, d_mm = ours["accuracy"] - best["accuracy"], ours["accuracy"] - minmax["accuracy"]
        out.append(f"Ours per tensor with {name} is {_compare(d_best, se)} onnxruntime's best per-tensor "
                   f"setting ({best['config']}, {signed_pts(d_best)} points) and {_compare(d_mm, se)} its MinMax "
                   f"calibration ({signed_pts(d_mm)} points).")
    return " ".join(out) + f" One binomial standard error on {n} images is about {100 * _se(best['accuracy'], n):.1f} points."


TEXT_THROUGHPUT = """\
Throughput: images per second of each model in a plain onnxruntime session (same session options,
the network's batch size, best of 3 passes over the same images after a warm-up batch; minifloat:
1 pass). onnxruntime fuses the QDQ pairs around convolutions into integer operators; ours is the
*simulated* model (float arithmetic with quantize steps made of standard ops), so its cost over
FP32 is the simulation overhead, not a deployment speed."""


def _num(x: float | None) -> str:
    return "—" if not x else f"{x:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "—"


def throughput_table(results: dict) -> str:
    rows = []
    for name, r in _nets(results):
        t = r["ort"]["throughput"]
        fp, q, ours, mf = t.get("fp32"), t.get("ort_qdq_int8"), t.get("ristretto_dfp8"), t.get("ristretto_minifloat8")
        rows.append([_label(r), f"{t['images']} @ {t['batch_size']}", _num(fp), _num(q), _num(ours), _num(mf),
                     _ratio(q, ours), _ratio(fp, ours), _ratio(fp, mf)])
    return md_table(["network", "images @ batch", "FP32", "onnxruntime QDQ int8 (per-tensor MinMax)",
                     "ristretto simulated dfp 8/8/8", "ristretto simulated minifloat 8", "onnxruntime / ristretto dfp",
                     "FP32 / ristretto dfp", "FP32 / ristretto minifloat"], rows)


# ---------------------------------------------------------------------------------------------
# Performance, machine


TEXT_PERF = """\
`compress --tolerance 0.01` runs of this page: wall time from the report (`report.seconds`: the
search stages and the total including writing the model), evaluations in full passes over the
search set (`report.evaluations`; a plan rejected early on the screening quarter counts as a
fraction), plans scored and plans screened out early. The search sets are given in the Networks
table. Timings share two cores with whatever else ran on the machine (see the load average)."""


def section_performance(results: dict) -> str:
    rows = []
    for name, r in _nets(results):
        for scheme, run in r["compress"].items():
            s = run["seconds"]
            per = s.get("search", 0.0) / run["evaluations"] if run["evaluations"] else 0.0
            rows.append([_label(r), scheme, run["search_images"], f"{s.get('search', 0):.1f}", f"{s.get('total', 0):.1f}",
                         f"{run['evaluations']:.1f}", run["plans_scored"], run["screened_out"], f"{per:.1f}"])
    text = md_table(["network", "scheme", "search images", "search s", "total s", "evaluations", "plans scored",
                     "screened out", "s per evaluation"], rows)
    text += "\n\n**Simulation overhead.** " + overhead_text(results)
    return text


def overhead_text(results: dict) -> str:
    rb = results.get("runtime_benchmark")
    measured = []
    for name, r in _nets(results):
        t = r["ort"]["throughput"]
        if t.get("ristretto_dfp8") and t.get("fp32"):
            measured.append(f"{_label(r)}: FP32 {t['fp32']:.0f} images/s, simulated dfp 8/8/8 "
                            f"{t['ristretto_dfp8']:.0f} images/s, ratio {t['fp32'] / t['ristretto_dfp8']:.2f} "
                            f"(batch {t['batch_size']})")
    own = "Measured in this run (plain sessions, as in the throughput table): " + "; ".join(measured) + "."
    if rb is None:
        return ("`bench/out/runtime.json` does not exist (the runtime benchmark `bench/bench_runtime.py` has not "
                "been run here), so the overhead is the one measured in this run. " + own)
    return runtime_json_text(rb) + "\n\n" + own


def runtime_json_text(rb: dict) -> str:
    """The runtime benchmark's throughput table, or its raw JSON when the layout is unknown."""
    data = rb.get("data")
    head = f"From `{rb['path']}`, written by the runtime benchmark (`bench/bench_runtime.py`)"
    try:
        rows = [[name, f"{v['images_per_s_best']:.0f}", f"{v['ratio_to_fp32_best']:.2f}"]
                for name, v in data["throughput"].items()]
        what = f"{data.get('model', '?')}, {data.get('images', '?')} images, batch {data.get('batch_size', '?')}"
        return (f"{head} ({what}; its own run, with its own machine load):\n\n"
                + md_table(["configuration", "images/s (best)", "vs FP32"], rows))
    except (KeyError, TypeError, AttributeError):
        text = json.dumps(data if data is not None else rb.get("error"), indent=1, default=str)
        return f"{head}:\n\n```json\n{text[:2500]}\n```"


def section_machine(results: dict) -> str:
    m = results["machine"]
    rows = [[k, v] for k, v in m.items()]
    secs = [[name, f"{s:.0f}", ", ".join(f"{k} {v:.0f}" for k, v in results["section_parts"].get(name, {}).items())]
            for name, s in results["sections"].items()]
    secs.append(["**total**", f"**{results['total_seconds']:.0f}**", f"{results['total_seconds'] / 60:.1f} min"])
    return (md_table(["machine", ""], rows) + "\n\nWall time per section (seconds):\n\n"
            + md_table(["section", "seconds", "per network"], secs))


def commands(results: dict) -> str:
    return ("Measured and written by (started " + results["started"] + "):\n\n```bash\n" + results["command"]
            + "\n```\n\nThe raw numbers are in `bench/out/reproduce.json` (not committed); "
              "`python bench/reproduce.py --render bench/out/reproduce.json` rewrites this page from them "
              "without measuring. `python bench/reproduce.py --quick` is a smoke run of a few minutes on "
              "small subsets.")


# ---------------------------------------------------------------------------------------------
# Summary and page


def summary(results: dict) -> str:
    """The key measured numbers, one row per network (Δ in points against our FP32)."""
    rows = []
    for name, r in _nets(results):
        fp = r["fp32"]
        dfp = "; ".join(f"{'/'.join(map(str, x['bits']))}: {_acc_delta(x['accuracy'], fp)}" for x in r["t52"])
        t41, t61, t71 = r["t41"], r["t61"], r["t71"]
        fixed = f"{t41['bits']}-bit {t41['q']}: {_acc_delta(t41['table_accuracy'], fp)}"
        mini = (f"{t61['exp_bits']}e/{t61['mant_bits']}m: {_acc_delta(t61['accuracy'], r['fp32_on']['minifloat'])} "
                f"on {t61['on']}")
        pow2 = _acc_delta(t71["accuracy"], fp)
        run = r["compress"].get("dfp")
        found = f"{_cats_short(run)}: {_acc_delta(run['table_accuracy'], fp)}" if run else "—"
        thesis_rule, mse_rule = _ours(r["ort"], "tensor", "max"), _ours(r["ort"], "tensor", "mse")
        mm = next((x for x in r["ort"]["rows"] if x.get("config") == "per-tensor MinMax" and "accuracy" in x), None)
        vs = "—"
        if thesis_rule and mse_rule and mm:
            vs = f"{pct(thesis_rule['accuracy'])} / {pct(mse_rule['accuracy'])} vs {pct(mm['accuracy'])}"
        rows.append([f"{_label(r)} (FP32 {pct(fp)})", dfp, fixed, mini, pow2, found, vs])
    return md_table(["network", "dfp at the thesis's widths", "static fixed point", "minifloat 8-bit",
                     "pow2 -8..-1 weights", "`compress --scheme dfp` (outputs/conv/fc bits)",
                     "dfp 8/8/8 per tensor, eq. 5.2 / MSE ranges, vs onnxruntime int8 per tensor (MinMax)"], rows)


def _cats_short(run: dict) -> str:
    return "/".join("float" if c["bits"] is None else str(c["bits"]) for c in run["categories"].values()) + " bits"


INTRO = """\
`bench/reproduce.py` repeats the experiments of Gysel's thesis (*Ristretto: Hardware-Oriented
Approximation of Convolutional Neural Networks*, 2016) on the zoo's networks and puts the thesis's
own numbers next to ours. Every number in a column or sentence about "ours" was measured by the
script in the run described at the end of this page, on real data; columns headed "thesis" quote
the thesis (or the Ristretto blog post) and were not measured here. Accuracies are top-1 in %,
Δ is the absolute change from FP32 in percentage points."""


def write_report(results: dict, out: Path) -> Path:
    """Write ``out/RESULTS.md`` and ``out/img/*.png``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    smoke = ("**Smoke run (`--quick`): small subsets of the data; these numbers are not the reproduction.**"
             if results["quick"] else "")
    parts = [
        "# Reproducing the Ristretto thesis on the zoo models", smoke, INTRO,
        "Key numbers (details below):\n\n" + summary(results),
        "## Networks and data", section_networks(results), NOTES_NETWORKS,
        "## Table 5.1: one part in dynamic fixed point", TEXT_5_1, section_5_1(results),
        "## Table 4.1: static fixed point", TEXT_4_1, section_4_1(results), compress_table(results, "fixed"),
        "## Table 5.2: dynamic fixed point", TEXT_5_2, section_5_2(results), compress_table(results, "dfp"),
        "## Table 6.1: minifloat", TEXT_6_1, section_6_1(results), compress_table(results, "minifloat"),
        "## Table 7.1: power-of-two weights (multiplier-free)", TEXT_7_1, section_7_1(results),
        compress_table(results, "pow2").replace("):", "; the window of each layer sits at the top of its range):", 1),
        "## Fine-tuned: tables 5.2, 6.1 and 7.1 after (before) fine-tuning", reproduce_finetune.TEXT,
        reproduce_finetune.section(results),
        "## Figures 8.1-8.3: accuracy against bit width", TEXT_FIG, section_figures(results, out),
        "## onnxruntime's int8 quantizer side by side", TEXT_ORT, section_ort(results),
        "## Performance", TEXT_PERF, section_performance(results),
        "## Machine, command and wall time", commands(results), section_machine(results),
    ]
    path = out / "RESULTS.md"
    path.write_text("\n\n".join(p.strip() for p in parts if p) + "\n")
    return path
