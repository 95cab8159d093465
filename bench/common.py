"""Measurement helpers shared by the benchmarks: networks, scoring with a memo, timers, tables.

Everything here measures through the package's public path (``build_context`` -> ``Scorer``), so
when the runtime gets faster (a simulator that changes formats without rebuilding sessions) the
benchmarks get faster with it, and what they time is what a user's ``compress`` would spend.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ristretto_onnx import zoo
from ristretto_onnx.compress import CompressOptions, SearchContext, build_context
from ristretto_onnx.formats import Fixed, Minifloat
from ristretto_onnx.passes.plan import plan_to_dict
from ristretto_onnx.stats import CATEGORIES, GroupRange, category_groups
from ristretto_onnx.runtime.session import available_cpus

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Machine and timing


def machine_info() -> dict[str, object]:
    """What a reader needs to judge the wall times: CPUs we may use, their model, versions, load."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpus_available": available_cpus(), "cpu_count": os.cpu_count(), "cpu_model": model or platform.processor(),
        "python": platform.python_version(), "onnxruntime": ort.__version__, "onnx": onnx.__version__,
        "numpy": np.__version__, "platform": platform.platform(),
        "load_average_at_start": None if load is None else [round(x, 2) for x in load],
    }


class Stopwatch:
    """Wall time per named section, summed over repeated entries (one section, several networks)."""

    def __init__(self, log=None) -> None:
        self.seconds: dict[str, float] = {}
        self.parts: dict[str, dict[str, float]] = {}
        self.log = log or (lambda msg: None)

    @contextmanager
    def section(self, name: str, part: str = ""):
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            self.log(f"  [{name}: {dt:.1f} s]")
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            if part:
                self.parts.setdefault(name, {})[part] = self.parts.get(name, {}).get(part, 0.0) + dt


# ---------------------------------------------------------------------------------------------
# Networks


#: What each evaluation set is for. Every set is a seeded subset of the network's test set (see
#: ``test_subset``), scored with the same calibration ranges, so a plan chosen on one set can be
#: scored on another unchanged.
ROLES = {
    "table": "the tables' values",
    "search": "compress searches and split choices",
    "sweep": "the bit-width sweeps (figures 8.1-8.3)",
    "minifloat": "minifloat measurements (its simulation is the slowest)",
}


@dataclass(frozen=True)
class NetworkSpec:
    """A zoo network and how many test images each kind of measurement uses (see ``ROLES``).

    ``table_size=None`` means the whole test set; the other roles default to the table set. ``calib_size`` is a seeded subset of the calibration
    split, shared by our range analysis and onnxruntime's calibrators.
    """

    name: str
    label: str
    thesis: str  # the thesis network it stands in for
    table_size: int | None = None
    search_size: int | None = None
    sweep_size: int | None = None
    minifloat_size: int | None = None
    calib_size: int = 500
    batch_size: int = 256
    compress_schemes: tuple[str, ...] = ("fixed", "dfp", "minifloat", "pow2")
    fig_widths: tuple[int, ...] = (16, 14, 12, 10, 8, 7, 6, 5, 4, 3, 2)
    minifloat_widths: tuple[int, ...] | None = None  # None: fig_widths
    throughput_images: int = 2048

    def size(self, role: str) -> int | None:
        """Images for ``role``; unset roles use the table set's size."""
        n = getattr(self, f"{role}_size")
        return self.table_size if n is None else n


@dataclass
class Bench:
    """One network's measurement state: data, one context per evaluation set, a memo of scores.

    Roles with the same number of images share one context (and one memo entry per plan).
    """

    spec: NetworkSpec
    model_path: Path
    test: object  # ristretto_onnx.data.Dataset: the whole test set
    calib: object
    contexts: dict[str, SearchContext]
    cache: dict[tuple[int, str], float] = field(default_factory=dict)

    @property
    def table(self) -> SearchContext:
        return self.contexts["table"]

    @property
    def ranges(self) -> list[GroupRange]:
        return self.table.ranges

    @property
    def chance(self) -> float:
        return 1.0 / (self.test.num_classes or 10)

    def context(self, on: str) -> SearchContext:
        return self.contexts[on]

    def n(self, on: str) -> int:
        return self.contexts[on].scorer.n

    def baseline(self, on: str = "table") -> float:
        return self.contexts[on].scorer.baseline

    def accuracy(self, plan: Mapping, on: str = "table") -> float:
        """Top-1 of ``plan`` on the evaluation set for role ``on``, scored once per set."""
        key = (self.n(on), json.dumps(plan_to_dict(plan), sort_keys=True))
        if key not in self.cache:
            self.cache[key] = self.contexts[on].scorer.score(plan).value
        return self.cache[key]

    def release(self, *roles: str) -> None:
        """Drop the contexts of ``roles`` that no other role shares, with their simulator sessions
        (SqueezeNet's hold gigabytes; onnxruntime's histogram calibrators need the room next)."""
        keep = {id(ctx) for role, ctx in self.contexts.items() if role not in roles}
        for role in roles:
            if id(self.contexts[role]) not in keep:
                self.contexts[role] = None  # type: ignore[assignment]
        gc.collect()

    def has(self, category: str) -> bool:
        return bool(category_groups(self.ranges, category))

    def test_batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The table set's preprocessed batches (the scorer's in-memory copy when it has one)."""
        batches = getattr(self.table.scorer, "batches", None)
        if batches is None:
            batches = list(test_subset(self.test, self.n("table")).batches(self.spec.batch_size))
        return batches

    def calib_batches(self, batch_size: int) -> list[np.ndarray]:
        """Calibration images in equal-sized batches (onnxruntime's histogram calibrators need
        equal shapes to stack them), the same images our ranges were computed from."""
        return [x for x, _ in self.calib.batches(batch_size)]


def test_subset(test, n: int):
    """The first ``n`` of a seeded permutation of the test set (in dataset order). Smaller sets
    are subsets of larger ones, and every class can appear (the ImageNet sample is stored in
    class order, so a plain prefix would hold only the first classes)."""
    return test if n >= len(test) else test.subset(n, seed=0)


def open_bench(spec: NetworkSpec, log=print) -> Bench:
    """Resolve the zoo files and build one context per distinct evaluation-set size (each
    computes the ranges from the same calibration images, so they are identical)."""
    model = zoo.resolve_model(f"zoo:{spec.name}")
    test = zoo.model_dataset(spec.name, "test")
    calib = zoo.model_dataset(spec.name, "calib")
    calib = calib.subset(min(spec.calib_size, len(calib)), seed=0)
    opts = CompressOptions(batch_size=spec.batch_size)
    by_size: dict[int, SearchContext] = {}
    contexts: dict[str, SearchContext] = {}
    for role in ROLES:
        n = min(spec.size(role) or len(test), len(test))
        if n not in by_size:
            by_size[n] = build_context(str(model), test_subset(test, n), calib=calib, options=opts)
            log(f"  {spec.name}: FP32 top-1 {by_size[n].scorer.baseline:.4f} on {n} images "
                f"(context {sum(by_size[n].seconds.values()):.1f} s)")
        contexts[role] = by_size[n]
    cap_sessions(contexts["minifloat"], 2)
    return Bench(spec, model, test, calib, contexts)


def cap_sessions(ctx: SearchContext, n: int) -> None:
    """Keep at most ``n`` sessions in the context's simulator cache.

    The simulator keeps 8 sessions (one per weight assignment) by default; a SqueezeNet session
    with minifloat activations holds about 1 GB, so three contexts' caches exhaust 23 GB. The
    minifloat measurements score each plan once, so a cache buys them nothing. A no-op if the
    runtime has no such cache.
    """
    sim = getattr(getattr(ctx.scorer, "run_plan", None), "sim", None)
    if sim is not None and hasattr(sim, "max_sessions"):
        sim.max_sessions = min(sim.max_sessions, n)


# ---------------------------------------------------------------------------------------------
# Plans with one format for every quantized group (the thesis's fixed point and minifloat)


def uniform_plan(ranges: Sequence[GroupRange], fmt, categories: Iterable[str] = CATEGORIES) -> dict:
    """Every group of ``categories`` in the same format ``fmt`` (biases and others float)."""
    cats = set(categories)
    return {r.group: (fmt if r.category in cats else None) for r in ranges}


def max_range(ranges: Sequence[GroupRange], categories: Iterable[str] = CATEGORIES) -> float:
    cats = set(categories)
    return max((r.max_abs for r in ranges if r.category in cats), default=1.0)


def q_notation(fmt: Fixed) -> str:
    """The thesis's Q<IL>.<FL> (IL counts the sign bit)."""
    return f"Q{fmt.bits - fmt.frac_bits}.{fmt.frac_bits}"


def minifloat_split(fmt: Minifloat) -> str:
    return f"{fmt.exp_bits}e/{fmt.mant_bits}m"


# ---------------------------------------------------------------------------------------------
# Plain sessions: evaluation and throughput (for models the scorer cannot run, e.g. onnxruntime's)


def evaluate_session(session: ort.InferenceSession, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(top-1, seconds) of a plain session over labelled batches."""
    name = session.get_inputs()[0].name
    t = time.perf_counter()
    hits = n = 0
    for x, y in batches:
        out = session.run(None, {name: x})[0]
        hits += int((out.reshape(len(out), -1).argmax(axis=1) == y).sum())
        n += len(y)
    return hits / max(n, 1), time.perf_counter() - t


def images_per_second(session: ort.InferenceSession, batches: Sequence[np.ndarray], repeats: int = 3) -> float:
    """Best-of-``repeats`` throughput over ``batches`` after one warm-up batch (best, because
    other processes on a shared machine only ever make a run slower)."""
    name = session.get_inputs()[0].name
    session.run(None, {name: batches[0]})
    n = sum(len(x) for x in batches)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for x in batches:
            session.run(None, {name: x})
        best = min(best, time.perf_counter() - t)
    return n / best


# ---------------------------------------------------------------------------------------------
# Markdown


def pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def signed_pts(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:+.{digits}f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join("" if c is None else str(c) for c in row) + " |")
    return "\n".join(lines)


def json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)
