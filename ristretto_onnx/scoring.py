"""Scoring format plans for the search: one verdict per plan, from as few images as it needs.

The one scorer of the package: ``compress`` scores every plan of its search here, ``quantize`` the
few alternatives of a scheme at its width. The metrics are those of the registry
(:data:`ristretto_onnx.runtime.metrics.PER_SAMPLE`), compared image by image.

The search scores dozens of plans on the same data, so everything that does not depend on the
plan is done once: the images are preprocessed once and kept in memory (when they fit), the FP32
model's outputs and per-image scores are computed once, and a simulator
(:mod:`ristretto_onnx.runtime`) changes formats without rebuilding its session where it can.

Sequential scoring. A plan is scored batch by batch, in a fixed order of the images, and its
per-image scores are kept: a plan is never scored twice on the same image (asking again for a
plan resumes where it stopped). After each batch the verdict "does the drop on the *full* set
stay within the tolerance?" may already be settled:

* exactly: the images not yet scored can raise the metric by at most ``remaining / total``, so
  when even that cannot bring the drop within the tolerance, the plan is rejected;
* statistically (early rejection, at a few looks: the first ``min_screen`` images, the screening
  part, half and three quarters of the data): when the drop so far exceeds the tolerance by more
  than ``z`` standard errors of the paired difference to the FP32 model's per-image scores.

An acceptance is only ever made on the full set, so early rejection never accepts a plan the
full set would reject. A *provisional* verdict (:meth:`Scorer.decide` with ``provisional=True``)
stops at the end of the screening part when the drop there is within the tolerance; it is the
search's guess for a per-category width, not an acceptance (see :mod:`ristretto_onnx.search`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.runtime.metrics import PER_SAMPLE

#: Fractions of the data after which early rejection looks at the drop (besides ``min_screen``
#: images and the screening part).
LOOKS = (0.5, 0.75)


@dataclass(frozen=True)
class Score:
    """A plan's metric on the ``n`` images scored so far, and on the screening part.

    ``screened_out``: rejected before the full set was scored. ``provisional``: the screening
    part looked fine and scoring stopped there (no verdict on the full set yet).
    """

    value: float
    n: int
    screened_out: bool = False
    seconds: float = 0.0
    screen_value: float | None = None
    provisional: bool = False


@dataclass(frozen=True)
class Decision:
    """A verdict on a plan: ``"accept"`` (full set), ``"reject"`` or ``"likely"`` (provisional)."""

    verdict: str
    score: Score

    @property
    def ok(self) -> bool:
        """Accepted, or provisionally fine on the screening part."""
        return self.verdict != "reject"

    @property
    def accepted(self) -> bool:
        return self.verdict == "accept"


@dataclass
class _Progress:
    """What is known of one plan: per-image scores of the first ``n`` images (``batches`` batches)."""

    batches: int = 0
    n: int = 0
    samples: list[np.ndarray] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)  # custom metrics only
    total: float = 0.0  # sum of the per-image scores
    discordant: int = 0  # images whose score differs from the FP32 model's
    rejected_early: bool = False
    seconds: float = 0.0


def by_batch(run: Callable, batches: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> Callable:
    """``run`` as a function of a batch's number: ``f(plan, k)`` (or ``f(k)`` for the FP32 model).

    The one place the scorer tells runners apart: a cluster runner
    (:class:`~ristretto_onnx.runtime.cluster.RayRunner`) holds the batches itself and is asked
    by number (``run_batch``); a local runner is given the batch's inputs.
    """
    run_batch = getattr(run, "run_batch", None)
    if run_batch is not None:
        return run_batch
    return lambda *args: run(*args[:-1], batches[args[-1]][0])


def plan_key(plan: Mapping) -> Hashable:
    """A plan's identity for the cache: its non-float formats by group (formats are frozen)."""
    return tuple(sorted((str(g), repr(f)) for g, f in plan.items() if f is not None))


class Scorer:
    """Scores plans on a fixed dataset against the FP32 baseline (see the module docstring).

    ``run_plan(plan, x) -> outputs`` is the simulator; ``run_float(x)`` the FP32 model. A custom
    metric (``metric_fn(outputs, labels) -> float``) disables early decisions, which need
    per-sample scores. ``screen_fraction=1.0`` scores every plan on the full data.
    ``ahead(plans, depth)``: the runner's look-ahead, given ``(plan, first batch)`` pairs and the
    screening part's batches (:meth:`~ristretto_onnx.runtime.cluster.RayRunner.ahead`: a cluster
    scores them concurrently); ``None`` (a local runner): plans run when they are asked for.
    """

    def __init__(
        self,
        batches: list[tuple[np.ndarray, np.ndarray | None]],
        run_plan: Callable[[Mapping, np.ndarray], np.ndarray],
        run_float: Callable[[np.ndarray], np.ndarray],
        *,
        metric: str = "top1",
        metric_fn: Callable[[np.ndarray, np.ndarray | None], float] | None = None,
        screen_fraction: float = 0.25,
        min_screen: int = 500,
        z: float = 3.0,
        looks: tuple[float, ...] = LOOKS,
        ahead: Callable[[Sequence[tuple[Mapping, int]], int], None] | None = None,
    ) -> None:
        if not batches:
            raise RistrettoError("the evaluation data is empty")
        self.batches = batches
        self.run_plan = run_plan
        self._ahead = ahead
        self._run_batch = by_batch(run_plan, batches)
        self.metric = metric
        self.metric_fn = metric_fn
        labels = [y for _, y in batches]
        self.labels = None if any(y is None for y in labels) else np.concatenate(labels)
        if metric in ("top1", "top5") and self.labels is None:
            raise RistrettoError(f"metric {metric} needs labels; this data has none (use --metric fidelity)")
        if metric_fn is None and metric not in PER_SAMPLE:
            raise RistrettoError(f"unknown metric {metric!r}")
        self.sizes = [len(x) for x, _ in batches]
        self.ends = np.cumsum(self.sizes)  # images scored after each batch
        self.n = int(self.ends[-1])
        self.float_outputs = self._outputs(run_float)
        self.ref_pred = self.float_outputs.argmax(axis=1)
        self.z = z
        self.early = metric_fn is None and screen_fraction < 1.0
        # Screening part: the first batches covering ``screen_fraction`` of the data.
        self.screen_batches = self._batches_for(max(min_screen, int(self.n * screen_fraction))) if self.early else len(batches)
        self.n_screen = int(self.ends[self.screen_batches - 1])
        looks_at = {self._batches_for(min_screen), self.screen_batches} | {self._batches_for(int(self.n * f)) for f in looks}
        self.look_batches = {b for b in looks_at if b < len(batches)} if self.early else set()
        self.baseline_samples = None if metric_fn else self._per_sample(self.float_outputs, 0, self.n)
        self.baseline = self._value(self.float_outputs, self.baseline_samples)
        if self.baseline_samples is not None:
            self._baseline_prefix = np.concatenate([[0.0], np.cumsum(self.baseline_samples)])
        self._progress: dict[Hashable, _Progress] = {}
        self.images_scored = 0  # plan evaluations, image by image (the FP32 baseline not counted)
        self.plans_scored = 0
        self.screened_out = 0
        self.seconds = 0.0

    # -- internals

    def _batches_for(self, images: int) -> int:
        """How many leading batches it takes to cover ``images`` images (at least one)."""
        return int(min(len(self.batches), max(1, np.searchsorted(self.ends, images) + 1)))

    def _outputs(self, run: Callable[[np.ndarray], np.ndarray], lo: int = 0, hi: int | None = None) -> np.ndarray:
        hi = len(self.batches) if hi is None else hi
        run_batch = by_batch(run, self.batches)
        outs = [np.asarray(run_batch(k)) for k in range(lo, hi)]
        out = np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)
        return out.reshape(len(out), -1)

    def _per_sample(self, out: np.ndarray, start: int, stop: int) -> np.ndarray:
        labels = None if self.labels is None else self.labels[start:stop]
        return PER_SAMPLE[self.metric](out, labels, self.ref_pred[start:stop]).astype(np.float64)

    def _value(self, out: np.ndarray, samples: np.ndarray | None) -> float:
        if self.metric_fn is not None:
            return float(self.metric_fn(out, self.labels))
        return float(samples.mean())

    def _advance(self, plan: Mapping, p: _Progress, batches: int) -> None:
        """Score ``plan`` on its next batches, up to ``batches`` in all."""
        t0 = time.perf_counter()
        for k in range(p.batches, batches):
            out = np.asarray(self._run_batch(plan, k))
            out = out.reshape(len(out), -1)
            lo, hi = p.n, p.n + self.sizes[k]
            if self.metric_fn is None:
                s = self._per_sample(out, lo, hi)
                p.samples.append(s)
                p.total += float(s.sum())
                p.discordant += int(np.count_nonzero(s != self.baseline_samples[lo:hi]))
            else:
                p.outputs.append(out)
            p.batches, p.n = k + 1, hi
            self.images_scored += self.sizes[k]
        dt = time.perf_counter() - t0
        p.seconds += dt
        self.seconds += dt

    def _score(self, p: _Progress) -> Score:
        if self.metric_fn is not None:
            value = float(self.metric_fn(np.concatenate(p.outputs), self.labels)) if p.n == self.n else math.nan
            screen = value
        else:
            value = p.total / p.n
            screen = float(np.concatenate(p.samples)[: self.n_screen].mean()) if p.n >= self.n_screen else None
        return Score(value, p.n, p.rejected_early, p.seconds, screen, p.n < self.n and not p.rejected_early)

    def _rejects_early(self, p: _Progress, tolerance: float) -> bool:
        """Settled before the full set: exactly (bound) at every batch, statistically at the looks."""
        if self.metric_fn is not None or not self.early or p.n >= self.n:
            return False
        rest = self.n - p.n
        base_total = self._baseline_prefix[-1]
        if (base_total - p.total - rest) / self.n > tolerance + 1e-12:  # even if every other image scores 1
            return True
        if p.batches in self.look_batches:
            d = (self._baseline_prefix[p.n] - p.total) / p.n
            se = math.sqrt(max(p.discordant / p.n, 1.0 / p.n) / p.n)
            return d - tolerance > self.z * se
        return False

    def _get(self, plan: Mapping) -> _Progress:
        key = plan_key(plan)
        p = self._progress.get(key)
        if p is None:
            p = self._progress[key] = _Progress()
            self.plans_scored += 1
        return p

    # -- API

    def forget(self) -> None:
        """Drop every cached plan result: the runner's model changed (e.g. new weights)."""
        self._progress.clear()

    @property
    def evaluations(self) -> float:
        """Images scored, in units of full passes over the data."""
        return self.images_scored / self.n

    def drop(self, value: float) -> float:
        return self.baseline - value

    def paired_drop(self, score: Score) -> float:
        """The drop on the images ``score`` was measured on (the FP32 model on the same images)."""
        if self.metric_fn is not None or score.n >= self.n:
            return self.drop(score.value)
        return float(self._baseline_prefix[score.n] / score.n - score.value)

    def screen_drop(self, score: Score) -> float:
        """The drop on the screening part (the full drop when the plan was scored on one part)."""
        if score.screen_value is None or self.metric_fn is not None:
            return self.paired_drop(score)
        return float(self._baseline_prefix[self.n_screen] / self.n_screen - score.screen_value)

    @property
    def announces(self) -> bool:
        """Whether :meth:`ahead` reaches a runner (one was given): otherwise there is no need
        to build the plans to announce."""
        return self._ahead is not None

    def ahead(self, plans: Sequence[Mapping]) -> None:
        """The next plans asked for, independent of each other's verdicts: a cluster runner
        (:meth:`~ristretto_onnx.runtime.cluster.RayRunner.ahead`) scores their first batches
        concurrently. Verdicts, counts and their order are unchanged: each plan is still
        consumed batch by batch when it is asked for; work fetched ahead and not needed is
        never counted. Only plans not scored yet are announced: a new plan always needs its
        first batch, while a resumed one may be settled without another. A no-op without a
        runner's ``ahead`` (the local runner)."""
        if self._ahead is not None:
            self._ahead([(plan, 0) for plan in plans if plan_key(plan) not in self._progress], self.screen_batches)

    def decide(self, plan: Mapping, tolerance: float, *, provisional: bool = False) -> Decision:
        """Does ``plan`` keep the drop within ``tolerance`` (absolute) on the full set?

        Scores only as many images as the verdict needs (module docstring); with
        ``provisional=True`` it may stop after the screening part with the verdict ``"likely"``.
        """
        p = self._get(plan)
        while True:
            if p.rejected_early:
                return Decision("reject", self._score(p))
            if p.n == self.n:
                s = self._score(p)
                return Decision("accept" if self.drop(s.value) <= tolerance + 1e-12 else "reject", s)
            if self._rejects_early(p, tolerance):
                p.rejected_early = True
                self.screened_out += 1
                continue
            if provisional and p.batches >= self.screen_batches:
                s = self._score(p)
                if self.screen_drop(s) <= tolerance + 1e-12:
                    return Decision("likely", s)
            self._advance(plan, p, p.batches + 1)

    def score(self, plan: Mapping, *, tolerance: float | None = None) -> Score:
        """Score ``plan`` on the full set; with ``tolerance`` (absolute drop), reject early when it cannot hold."""
        if tolerance is not None:
            return self.decide(plan, tolerance).score
        p = self._get(plan)
        self._advance(plan, p, len(self.batches))
        return self._score(p)

    def accepts(self, plan: Mapping, tolerance: float) -> tuple[bool, Score]:
        d = self.decide(plan, tolerance)
        return d.accepted, d.score
