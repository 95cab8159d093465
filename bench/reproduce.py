"""Reproduce the thesis's experiments (Gysel 2016, tables 4.1, 5.1, 5.2, 6.1, 7.1, figures 8.1-8.3)
on the zoo models, next to onnxruntime's own int8 quantizer, and write docs/RESULTS.md.

    RISTRETTO_ZOO=/work/shared/zoo python bench/reproduce.py            # full run (< 30 min + fine-tuning)
    RISTRETTO_ZOO=/work/shared/zoo python bench/reproduce.py --no-finetune   # without the fine-tuned rows
    RISTRETTO_ZOO=/work/shared/zoo python bench/reproduce.py --quick    # smoke run, a few minutes

Every number this writes is measured here on real data; the thesis's numbers appear only in
columns labelled "thesis" (see :mod:`bench.thesis_reference`). The tables compare ours with the
thesis's bracketed "before fine-tuning" values; the fine-tuned section (:mod:`bench.reproduce_finetune`,
skipped with ``--no-finetune`` or without torch) fine-tunes the configurations of tables 5.2, 6.1
and 7.1 and sets them beside the thesis's "after (before)".

The table functions (``table_5_1`` ...) take one network's :class:`~bench.common.Bench` and return
plain rows, so tests can run one small case of each (tests/bench/test_reproduce_quick.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ort_quant  # noqa: E402  (after the path fix above)
from bench import reproduce_finetune  # noqa: E402
from bench import thesis_reference as thesis  # noqa: E402
from bench.common import (  # noqa: E402
    REPO, ROLES, Bench, NetworkSpec, Stopwatch, evaluate_session, images_per_second, json_default,
    machine_info, max_range, minifloat_split, open_bench, q_notation, uniform_plan,
)
from ristretto_onnx.compress import compress  # noqa: E402
from ristretto_onnx.errors import RistrettoError  # noqa: E402
from ristretto_onnx.formats import Fixed, Minifloat  # noqa: E402
from ristretto_onnx.range_rules import dfp_format, integer_bits, minifloat_exp_bits  # noqa: E402
from ristretto_onnx.passes.pipeline import simulate  # noqa: E402
from ristretto_onnx.schemes import make_scheme, plan_for
from ristretto_onnx.stats import CATEGORIES  # noqa: E402
from ristretto_onnx.runtime.session import create_session  # noqa: E402

#: Networks of the full run: what each stands in for and how much data each measurement uses.
NETWORKS = (
    NetworkSpec("lenet-mnist", "LeNet / MNIST", "LeNet", minifloat_size=2000, calib_size=500),
    NetworkSpec("resnet20-cifar10", "ResNet-20 / CIFAR-10", "CIFAR-10 full", search_size=2000, sweep_size=2000,
                minifloat_size=500, calib_size=500, compress_schemes=("fixed", "dfp", "pow2"),
                throughput_images=1024),
    NetworkSpec("squeezenet1.1-imagenet", "SqueezeNet 1.1 / ImageNet sample", "CaffeNet", sweep_size=500,
                minifloat_size=200, calib_size=200, batch_size=32, compress_schemes=("dfp", "pow2"),
                fig_widths=(16, 12, 10, 8, 7, 6, 5, 4, 3, 2), minifloat_widths=(12, 8, 6, 5, 4),
                throughput_images=300),
)
#: Smoke run: small seeded subsets of the same data, one search, two onnxruntime settings.
QUICK_NETWORKS = (
    NetworkSpec("lenet-mnist", "LeNet / MNIST", "LeNet", table_size=2000, calib_size=200,
                compress_schemes=("dfp",), fig_widths=(16, 8, 6, 4)),
    NetworkSpec("resnet20-cifar10", "ResNet-20 / CIFAR-10", "CIFAR-10 full", table_size=500, minifloat_size=200,
                calib_size=100, compress_schemes=("dfp",), fig_widths=(16, 8, 6, 4)),
    NetworkSpec("squeezenet1.1-imagenet", "SqueezeNet 1.1 / ImageNet sample", "CaffeNet", table_size=100,
                minifloat_size=50, calib_size=50, batch_size=25, compress_schemes=(), fig_widths=(16, 8, 6, 4)),
)

#: Table 5.2's thesis rows that each zoo network is compared with, and their (outputs, conv, fc) bits.
TABLE_5_2_ROWS = {"lenet-mnist": ("LeNet (Exp 1)", "LeNet (Exp 2)"), "resnet20-cifar10": ("CIFAR-10 full",),
                  "squeezenet1.1-imagenet": ("SqueezeNet",)}
TOLERANCE = 0.01
#: A sweep stops lowering the width once accuracy is this close to chance (it can only fall further).
COLLAPSED_ABOVE_CHANCE = 0.02

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Searching one parameter of a format by accuracy (thesis 4.4.1 and 6.3: "tries different
# partitionings ... the best setting is retained")


def hill_climb(score: Callable[[int], float], start: int, lo: int, hi: int, *, patience: int = 1,
               flat: Callable[[float], bool] = lambda v: False) -> tuple[int, dict[int, float]]:
    """The best integer in [lo, hi] by ``score``, walking away from ``start`` in both directions
    until ``patience`` steps in a row fail to improve. Steps where ``flat`` holds (chance-level
    accuracy, where no split is better than another) do not count against the patience."""
    tried = {start: score(start)}
    for step in (-1, 1):
        x, misses = start + step, 0
        while lo <= x <= hi and misses < patience:
            tried[x] = score(x)
            best_other = max(v for k, v in tried.items() if k != x)
            misses = 0 if tried[x] > best_other or flat(tried[x]) else misses + 1
            x += step
    best = max(sorted(tried, reverse=True), key=lambda k: tried[k])  # ties: the larger value
    return best, tried


def best_static_split(bench: Bench, bits: int, on: str = "search") -> dict:
    """Static fixed point (ch. 4): one ``Fixed(bits, F)`` for every layer output and parameter.

    Starts at the integer length that saturates nothing and moves the binary point right while
    accuracy improves (large values matter more than small ones, thesis 4.3.1)."""
    il0 = integer_bits(max_range(bench.ranges))

    def score(il: int) -> float:
        return bench.accuracy(uniform_plan(bench.ranges, Fixed(bits, bits - il)), on)

    collapsed = lambda v: v < bench.chance + COLLAPSED_ABOVE_CHANCE
    il, tried = hill_climb(score, il0, max(il0 - bits + 1, 1), il0, patience=2, flat=collapsed)
    fmt = Fixed(bits, bits - il)
    return {"bits": bits, "format": str(fmt), "frac_bits": fmt.frac_bits,
            "q": "any split" if all(map(collapsed, tried.values())) else q_notation(fmt),
            "accuracy": tried[il], "on": bench.n(on), "no_saturation_q": q_notation(Fixed(bits, bits - il0)),
            "tried": {q_notation(Fixed(bits, bits - k)): v for k, v in sorted(tried.items(), reverse=True)}}


def rule_exp_bits(bench: Bench, bits: int) -> int:
    """Eq. 6.2's exponent width for the largest value of the network, within the bit budget."""
    return max(1, min(minifloat_exp_bits(max_range(bench.ranges)), bits - 1, 7))


def histogram_exp_bits(bench: Bench, bits: int) -> int | None:
    """The package's exponent width for a minifloat shared by all groups: least relative error
    on the calibration histograms. Eq. 6.2 only avoids saturating the largest value and can
    flush most small weights to zero (it does on LeNet). ``None`` if the package lacks it."""
    try:
        from ristretto_onnx.range_rules import minifloat_exp_bits_mse
    except ImportError:
        return None
    stats = [r.stats for r in bench.ranges if r.category != "bias" and getattr(r, "stats", None) is not None]
    return minifloat_exp_bits_mse(stats, bits) if stats else None


def minifloat_start(bench: Bench, bits: int) -> tuple[int, str]:
    """Where a minifloat split starts: the histogram rule when available, else eq. 6.2."""
    e = histogram_exp_bits(bench, bits)
    return (e, "histogram") if e is not None else (rule_exp_bits(bench, bits), "eq. 6.2")


def best_minifloat_split(bench: Bench, bits: int, on: str = "search") -> dict:
    """Minifloat (ch. 6): one ``Minifloat(bits, E)`` for all, E by accuracy ("Ristretto searches
    for the best balance between exponent and mantissa bits", 6.3), starting at the rule."""
    start, rule = minifloat_start(bench, bits)

    def score(e: int) -> float:
        return bench.accuracy(uniform_plan(bench.ranges, Minifloat(bits, e)), on)

    e, tried = hill_climb(score, start, 1, min(bits - 1, 7))
    return {"bits": bits, "eq62_exp_bits": rule_exp_bits(bench, bits), "start_exp_bits": start, "start_rule": rule,
            "exp_bits": e, "mant_bits": bits - 1 - e, "accuracy": tried[e], "on": bench.n(on),
            "tried": {f"{k}e/{bits - 1 - k}m": v for k, v in sorted(tried.items())}}


def all_parts(bits: int) -> dict[str, int]:
    return {c: bits for c in CATEGORIES}


# ---------------------------------------------------------------------------------------------
# The tables


def table_5_1(bench: Bench, widths: Sequence[int] = thesis.TABLE_5_1_WIDTHS, on: str = "table") -> list[dict]:
    """Dynamic fixed point for one category at a time, the rest float (thesis table 5.1)."""
    dfp = make_scheme("dfp", range_rule="max")
    rows = []
    for cat in CATEGORIES:
        accs = None
        if bench.has(cat):
            accs = {b: bench.accuracy(plan_for(dfp, bench.ranges, {cat: b}), on) for b in widths}
        rows.append({"category": cat, "accuracy": accs, "on": bench.n(on)})
    return rows


def table_4_1(bench: Bench, bits: int) -> dict:
    """Static fixed point at the thesis's width: the split chosen on the search set, scored on
    the table set (thesis table 4.1)."""
    split = best_static_split(bench, bits, "search")
    fmt = Fixed(bits, split["frac_bits"])
    split["table_accuracy"] = bench.accuracy(uniform_plan(bench.ranges, fmt), "table")
    return split


def table_5_2(bench: Bench, configs: Sequence[tuple[int, int, int]]) -> list[dict]:
    """Dynamic fixed point with (layer outputs, conv, fc) bits as in the thesis's table 5.2, with
    eq. 5.2's ranges (the thesis) and with the MSE range rule (what ``compress`` uses by default)."""
    dfp, mse = make_scheme("dfp", range_rule="max"), make_scheme("dfp", range_rule="mse")
    rows = []
    for a, c, f in configs:
        widths = {"activations": a, "conv_weights": c, "fc_weights": f}
        rows.append({"bits": (a, c, f), "accuracy": bench.accuracy(plan_for(dfp, bench.ranges, widths), "table"),
                     "accuracy_mse": bench.accuracy(plan_for(mse, bench.ranges, widths), "table")})
    return rows


def table_5_2_vs_thesis(bench: Bench) -> list[dict]:
    """Table 5.2 at the thesis's configurations for this network; where ours falls more than a
    point further below FP32 than the thesis's before-fine-tuning value, a diagnosis of why."""
    names = TABLE_5_2_ROWS[bench.spec.name]
    refs = [next(r for r in thesis.TABLE_5_2 if r["network"] == n) for n in names]
    rows = []
    for row, ref in zip(table_5_2(bench, [r["bits"] for r in refs]), refs):
        row["thesis"] = ref["network"]
        if (bench.baseline() - row["accuracy"]) - (ref["fp32"] - ref["before"]) > 0.01:
            row["diagnosis"] = diagnose(bench, row["bits"], "sweep")
        rows.append(row)
    return rows


def table_6_1(bench: Bench, bits: int = 8) -> dict:
    """8-bit minifloat for all parts, the exponent width chosen by accuracy (table 6.1), all on
    the minifloat set (minifloat simulation is the slowest: its values need ``floor(log2|x|)``)."""
    return best_minifloat_split(bench, bits, "minifloat")


def table_7_1(bench: Bench, window: tuple[int, int] = thesis.POW2_WINDOW) -> dict:
    """Power-of-two weights in the thesis's fixed window, layer outputs in float (table 7.1)."""
    scheme = make_scheme("pow2", exp_min=window[0], exp_max=window[1])
    plan = plan_for(scheme, bench.ranges, {"conv_weights": 4, "fc_weights": 4})
    weights = [r for r in bench.ranges if r.role == "weights"]
    above = [r.group for r in weights if r.max_abs > 2.0 ** (window[1] + 0.5)]
    return {"window": f"pow2:{window[0]}:{window[1]}", "accuracy": bench.accuracy(plan, "table"),
            "layers": len(weights), "layers_clipped_at_top": len(above),
            "largest_weight": max(r.max_abs for r in weights)}


def compress_run(bench: Bench, scheme: str, tolerance: float = TOLERANCE, on: str = "search") -> dict:
    """``compress --scheme S --tolerance T`` on the search set (minifloat: on the minifloat set);
    its plan re-scored on the table set."""
    result = compress(str(bench.model_path), None, context=bench.context(on), scheme=scheme, tolerance=tolerance)
    rep = result.report
    return {
        "scheme": scheme, "tolerance": tolerance, "search_images": rep.n_images,
        "search_baseline": rep.baseline, "search_final": rep.final,
        "table_accuracy": bench.accuracy(result.plan, "table"),
        "categories": {c: {"bits": v["bits"], "example": v.get("format_example")} for c, v in rep.categories.items()},
        "weight_bytes": rep.weight_bytes, "weight_bytes_fp32": rep.weight_bytes_fp32,
        "weight_bits_mean": rep.weight_bits_mean, "activation_bits_mean": rep.activation_bits_mean,
        "seconds": rep.seconds, "evaluations": rep.evaluations, "plans_scored": rep.plans_scored,
        "screened_out": rep.screened_out,
    }


def sweep(bench: Bench, widths: Sequence[int]) -> dict[str, list[dict]]:
    """Figures 8.1-8.3: all parts at the same width, for static fixed point (best split per
    width) and dynamic fixed point on the sweep set, and minifloat (the histogram rule's
    exponent, see ``histogram_exp_bits``) on the minifloat set. Widths go down and a scheme
    stops once it is at chance level."""
    dfp = make_scheme("dfp", range_rule="max")
    on = "sweep"

    def minifloat(b: int) -> dict:
        fmt = Minifloat(b, minifloat_start(bench, b)[0])
        return {"accuracy": bench.accuracy(uniform_plan(bench.ranges, fmt), "minifloat"),
                "split": minifloat_split(fmt)}

    out: dict[str, list[dict]] = {}
    measure = {
        "fixed": lambda b: best_static_split(bench, b, on),
        "dfp": lambda b: {"accuracy": bench.accuracy(plan_for(dfp, bench.ranges, all_parts(b)), on)},
        "minifloat": minifloat,
    }
    for name, fn in measure.items():
        points = []
        scheme_widths = (bench.spec.minifloat_widths or widths) if name == "minifloat" else widths
        for b in sorted(scheme_widths, reverse=True):
            p = fn(b)
            points.append({"bits": b, "accuracy": p["accuracy"], "detail": p.get("q") or p.get("split")})
            if p["accuracy"] < bench.chance + COLLAPSED_ABOVE_CHANCE:
                break
        out[name] = points
    return out


# ---------------------------------------------------------------------------------------------
# onnxruntime's quantizer side by side


#: Our range rules at 8 bits: the thesis's eq. 5.2 (max) and the compress default (least squared error).
RANGE_RULES = {"max": "eq. 5.2 (max) ranges", "mse": "MSE ranges"}


def our_int8(bench: Bench, granularity: str, rule: str) -> tuple[dict, object | None]:
    """Our 8-bit dynamic fixed point, all parts, as a written model run in a plain session.

    Returns the row and the session (``None`` after a failure)."""
    label = f"ristretto dfp 8/8/8, {RANGE_RULES[rule]}, weights per {granularity}"
    try:
        t = time.perf_counter()
        scheme = make_scheme("dfp", weight_granularity=granularity, range_rule=rule)
        plan = plan_for(scheme, bench.ranges, all_parts(8))
        session = create_session(simulate(bench.table.prepared, plan))
        build = time.perf_counter() - t
        scored = bench.accuracy(plan, "table")
    except (RistrettoError, ValueError, NotImplementedError) as e:
        return {"label": label, "error": f"{type(e).__name__}: {e}"}, None
    acc, seconds = evaluate_session(session, bench.test_batches())
    calib = bench.table.seconds.get("prepare", 0.0) + bench.table.seconds.get("ranges", 0.0)
    return {"label": label, "rule": rule, "granularity": granularity, "accuracy": acc, "scorer_accuracy": scored,
            "quantize_seconds": calib + build, "eval_seconds": seconds}, session


def ort_int8(bench: Bench, configs: Sequence[ort_quant.OrtQuantConfig], work: Path, log: Log) -> list[dict]:
    """onnxruntime quantize_static (QDQ) for each config, on the same calibration images."""
    t = time.perf_counter()
    pre = ort_quant.preprocess_for_quantization(bench.model_path, work)
    pre_seconds = time.perf_counter() - t
    calib = bench.calib_batches(50)
    rows = []
    for cfg in configs:
        label = f"onnxruntime int8 QDQ, {cfg.label}"
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
                q = ort_quant.quantize(pre, "input", calib, cfg, work)
            session = create_session(q.path)
        except Exception as e:  # noqa: BLE001 - report the failing setting, go on with the others
            rows.append({"label": label, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        acc, seconds = evaluate_session(session, bench.test_batches())
        rows.append({"label": label, "config": cfg.label, "accuracy": acc,
                     "quantize_seconds": pre_seconds + q.seconds, "eval_seconds": seconds})
        if cfg.label == "per-tensor MinMax":  # kept for the throughput comparison
            rows[-1]["session"] = session
        log(f"    {label}: {acc:.4f} (quantize {pre_seconds + q.seconds:.1f} s, eval {seconds:.1f} s)")
    return rows


def diagnose(bench: Bench, bits: tuple[int, int, int], on: str = "search") -> list[dict]:
    """Where a dfp configuration (layer outputs, conv, fc bits) loses accuracy: each variant
    changes one thing of it, so the differences point at the cause."""
    a, c, f = bits
    dfp = make_scheme("dfp", range_rule="max")
    base = plan_for(dfp, bench.ranges, {"activations": a, "conv_weights": c, "fc_weights": f})
    acts = {r.group for r in bench.ranges if r.category == "activations"}
    outputs = {r.group for r in bench.ranges if r.role == "outputs"}
    no_minus_one = {r.group: dfp_format(r.max_abs, a) for r in bench.ranges if r.role == "outputs"}
    variants = [
        ("as configured", base),
        ("weights only (activations float)", {g: (None if g in acts else v) for g, v in base.items()}),
        ("activations only (weights float)", {g: (v if g in acts else None) for g, v in base.items()}),
        ("layer outputs float (layer inputs quantized)", {g: (None if g in outputs else v) for g, v in base.items()}),
        ("layer inputs float (layer outputs quantized)",
         {g: (v if g in outputs or g not in acts else None) for g, v in base.items()}),
        ("layer outputs without eq. 5.2's one-integer-bit-fewer rule", {**base, **no_minus_one}),
        (f"activations {a + 1}-bit (one more bit, what unsigned codes give non-negative tensors)",
         plan_for(dfp, bench.ranges, {"activations": a + 1, "conv_weights": c, "fc_weights": f})),
        ("MSE range rule instead of eq. 5.2 (the compress default)",
         plan_for(make_scheme("dfp", range_rule="mse"), bench.ranges,
                  {"activations": a, "conv_weights": c, "fc_weights": f})),
    ]
    return [{"variant": name, "accuracy": bench.accuracy(plan, on), "on": bench.n(on), "fp32": bench.baseline(on)}
            for name, plan in variants]


def throughput(bench: Bench, sessions: dict[str, object], images: int) -> dict[str, float]:
    """Images/s of each session on the first ``images`` test images, at the network's batch size."""
    batches, n = [], 0
    for x, _ in bench.test_batches():
        if n >= images:
            break
        batches.append(x)
        n += len(x)
    out = {"images": n, "batch_size": len(batches[0])}
    for name, session in sessions.items():  # minifloat simulation is slow: one pass is plenty
        out[name] = images_per_second(session, batches, repeats=1 if "minifloat" in name else 3)
    return out


def compare_with_onnxruntime(bench: Bench, configs, work: Path, log: Log, throughput_images: int) -> dict:
    """The onnxruntime section for one network: accuracy, times, throughput, and a diagnosis of
    where our per-tensor 8-bit result falls behind onnxruntime's."""
    sessions = {"fp32": create_session(bench.model_path)}
    ours = []
    for rule in RANGE_RULES:
        for granularity in ("tensor", "channel"):
            row, session = our_int8(bench, granularity, rule)
            if session is not None and "ristretto_dfp8" not in sessions:
                sessions["ristretto_dfp8"] = session  # the thesis's rule, per tensor
            ours.append(row)
            log(f"    {row['label']}: {row.get('accuracy', row.get('error'))}")
    from bench.rules_rows import rules_int8  # the issue-15 rules, through quantize's defaults
    ours += rules_int8(bench, log)
    theirs = ort_int8(bench, configs, work, log)
    ref = next((r for r in theirs if r.get("config") == "per-tensor MinMax" and "session" in r), None)
    if ref is not None:
        sessions["ort_qdq_int8"] = ref["session"]
    for r in theirs:
        r.pop("session", None)
    minifloat8 = uniform_plan(bench.ranges, Minifloat(8, minifloat_start(bench, 8)[0]))
    sessions["ristretto_minifloat8"] = create_session(simulate(bench.table.prepared, minifloat8))
    speed = throughput(bench, sessions, throughput_images)
    del sessions
    diagnosis = []
    ort_pt = [r["accuracy"] for r in theirs if "accuracy" in r and r["config"].startswith("per-tensor")]
    if "accuracy" in ours[0] and ort_pt and ours[0]["accuracy"] < max(ort_pt):
        diagnosis = diagnose(bench, (8, 8, 8), "table")
    return {"fp32": bench.baseline("table"), "rows": ours + theirs, "throughput": speed, "diagnosis": diagnosis}


# ---------------------------------------------------------------------------------------------
# The run


def run_network(spec: NetworkSpec, *, quick: bool, watch: Stopwatch, work: Path, log: Log,
                finetune: reproduce_finetune.Recipe | None | bool = None) -> dict:
    """Every section for one network; the stopwatch sums each section over the networks.
    ``finetune``: the recipe for the fine-tuned rows (``None``: none for this network, ``False``:
    skip the section)."""
    res: dict = {"spec": dataclasses.asdict(spec)}
    with watch.section("setup (contexts, calibration, FP32 baselines)", spec.name):
        bench = open_bench(spec, log)
    res.update(fp32=bench.baseline("table"), n_calib=len(bench.calib), has_fc=bench.has("fc_weights"),
               n={role: bench.n(role) for role in ROLES}, fp32_on={role: bench.baseline(role) for role in ROLES})
    runs: dict[str, dict] = {}

    def search(scheme: str) -> None:
        if scheme in spec.compress_schemes:
            log(f"  compress --scheme {scheme} --tolerance {TOLERANCE}")
            runs[scheme] = compress_run(bench, scheme, on="minifloat" if scheme == "minifloat" else "search")

    with watch.section("table 5.1", spec.name):
        res["t51"] = table_5_1(bench)
    with watch.section("table 5.2", spec.name):
        res["t52"] = table_5_2_vs_thesis(bench)
        search("dfp")
    with watch.section("table 4.1", spec.name):
        res["t41"] = table_4_1(bench, thesis.TABLE_4_1[spec.thesis]["bits"])
        search("fixed")
    with watch.section("table 6.1", spec.name):
        res["t61"] = table_6_1(bench, 8)
        search("minifloat")
    with watch.section("table 7.1", spec.name):
        res["t71"] = table_7_1(bench)
        search("pow2")
    res["compress"] = runs
    if finetune is not False:
        with watch.section("fine-tuning (tables 5.2, 6.1, 7.1)", spec.name):
            res["finetune"] = reproduce_finetune.measure(bench, res, finetune, log)
    with watch.section("figures 8.1-8.3", spec.name):
        res["sweep"] = sweep(bench, spec.fig_widths)
    bench.release("sweep", "minifloat")
    with watch.section("onnxruntime comparison", spec.name):
        configs = ort_quant.default_configs()
        if quick:
            configs = [c for c in configs if c.method == "MinMax"]
        res["ort"] = compare_with_onnxruntime(bench, configs, work, log, 512 if quick else spec.throughput_images)
    res["evaluations"] = {"distinct_scores": len(bench.cache)}
    return res


def runtime_benchmark() -> dict | None:
    """bench/out/runtime.json from bench/bench_runtime.py, when that benchmark has been run."""
    path = REPO / "bench" / "out" / "runtime.json"
    if not path.is_file():
        return None
    try:
        return {"path": str(path.relative_to(REPO)), "data": json.loads(path.read_text())}
    except (OSError, json.JSONDecodeError) as e:
        return {"path": str(path), "error": str(e)}


def save_raw(results: dict, watch: Stopwatch, t0: float, path: Path) -> None:
    """The raw results so far, with the section times, as JSON (``--render`` reads it back)."""
    results["sections"] = dict(watch.seconds)
    results["section_parts"] = dict(watch.parts)
    results["total_seconds"] = time.perf_counter() - t0
    path.write_text(json.dumps(results, indent=1, default=json_default))


def command_line(argv: Sequence[str]) -> str:
    zoo_env = os.environ.get("RISTRETTO_ZOO", "")
    prefix = f"RISTRETTO_ZOO={zoo_env} " if zoo_env else ""
    return prefix + " ".join(["python", "bench/reproduce.py", *argv])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on small data prefixes (a few minutes)")
    parser.add_argument("--out", default="docs", help="folder for RESULTS.md and img/ (default: docs)")
    parser.add_argument("--networks", default="", help="comma-separated zoo names to run (default: all)")
    parser.add_argument("--render", metavar="JSON", help="only rewrite RESULTS.md and the plots from the raw "
                        "results of an earlier run (bench/out/reproduce.json); measures nothing")
    parser.add_argument("--no-finetune", action="store_true", help="skip the fine-tuned rows of tables 5.2, "
                        "6.1 and 7.1 (they need torch and take most of the run's time)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="epochs per fine-tuned row "
                        "(default: 2 for LeNet, 1 for ResNet-20; --quick: 1)")
    parser.add_argument("--finetune-train-size", type=int, default=None, help="training images per fine-tuned "
                        "row, a seeded subset (0: the whole file; default: 10000 for LeNet, the whole file "
                        "for ResNet-20; --quick: 1000)")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    from bench.reproduce_report import write_report  # matplotlib only when writing

    if args.render:
        path = write_report(json.loads(Path(args.render).read_text()), Path(args.out))
        print(f"wrote {path} from {args.render}")
        return 0

    log: Log = lambda msg: print(msg, flush=True)
    t0 = time.perf_counter()
    watch = Stopwatch(log)
    specs = QUICK_NETWORKS if args.quick else NETWORKS
    if args.networks:
        wanted = set(args.networks.split(","))
        specs = tuple(s for s in specs if s.name in wanted)
    results = {"command": command_line(argv), "quick": args.quick, "machine": machine_info(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "networks": {}}
    work = ort_quant.work_dir()
    raw = REPO / "bench" / "out" / ("reproduce-quick.json" if args.quick else "reproduce.json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        log(f"== {spec.name}")
        recipe = False if args.no_finetune else reproduce_finetune.recipe_for(
            spec.name, quick=args.quick, epochs=args.finetune_epochs, train_size=args.finetune_train_size)
        results["networks"][spec.name] = run_network(spec, quick=args.quick, watch=watch, work=work, log=log,
                                                     finetune=recipe)
        gc.collect()  # the network's sessions (a few GB for SqueezeNet) go before the next one
        save_raw(results, watch, t0, raw)  # a crash later keeps what was measured
    results["runtime_benchmark"] = runtime_benchmark()
    save_raw(results, watch, t0, raw)
    out = Path(args.out)
    path = write_report(results, out)
    log(f"wrote {path} and {raw} in {results['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
