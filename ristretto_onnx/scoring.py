"""Scoring format plans for the search: one metric value per plan, as cheaply as it can be had.

The one scorer of the package: ``compress`` scores every plan of its search here, ``quantize`` the
few alternatives of a scheme at its width. The metrics are those of the registry
(:data:`ristretto_onnx.runtime.metrics.PER_SAMPLE`), compared image by image.

The search scores dozens of plans on the same data, so everything that does not depend on the
plan is done once: the images are preprocessed once and kept in memory (when they fit), the FP32
model's predictions are computed once, and a simulator (:mod:`ristretto_onnx.runtime`) changes
formats without rebuilding its session where it can.

Early rejection: the data is split into a *screening* part and the rest. A plan is first scored
on the screening part; when its drop there exceeds the tolerance by more than ``z`` standard
errors of a paired difference, it is rejected without scoring the rest. Otherwise the rest is
scored too and the decision is made on the full set, so early rejection never accepts a plan
the full set would reject.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.runtime.metrics import PER_SAMPLE

@dataclass(frozen=True)
class Score:
    """A plan's metric, on how many images, and whether it was decided on the screening part."""

    value: float
    n: int
    screened_out: bool = False
    seconds: float = 0.0


class Scorer:
    """Scores plans on a fixed dataset against the FP32 baseline (see the module docstring).

    ``run_plan(plan, x) -> outputs`` is the simulator; ``run_float(x)`` the FP32 model. A custom
    metric (``metric_fn(outputs, labels) -> float``) disables early rejection, which needs
    per-sample scores.
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
    ) -> None:
        if not batches:
            raise RistrettoError("the evaluation data is empty")
        self.batches = batches
        self.run_plan = run_plan
        self.metric = metric
        self.metric_fn = metric_fn
        labels = [y for _, y in batches]
        self.labels = None if any(y is None for y in labels) else np.concatenate(labels)
        if metric in ("top1", "top5") and self.labels is None:
            raise RistrettoError(f"metric {metric} needs labels; this data has none (use --metric fidelity)")
        if metric_fn is None and metric not in PER_SAMPLE:
            raise RistrettoError(f"unknown metric {metric!r}")
        self.n = sum(len(x) for x, _ in batches)
        self.float_outputs = self._outputs(run_float)
        self.ref_pred = self.float_outputs.argmax(axis=1)
        # Screening part: the first batches covering ``screen_fraction`` of the data.
        want = max(min_screen, int(self.n * screen_fraction))
        acc, k = 0, 0
        while k < len(batches) and acc < want:
            acc += len(batches[k][0])
            k += 1
        self.screen_batches = k if acc < self.n else len(batches)
        self.n_screen = acc if acc < self.n else self.n
        self.z = z
        self.baseline_samples = None if metric_fn else self._per_sample(self.float_outputs, 0, self.n)
        self.baseline = self._value(self.float_outputs, self.baseline_samples)
        self.evaluations = 0.0  # in units of full passes over the data
        self.plans_scored = 0
        self.screened_out = 0
        self.seconds = 0.0

    # -- internals

    def _outputs(self, run: Callable[[np.ndarray], np.ndarray], lo: int = 0, hi: int | None = None) -> np.ndarray:
        hi = len(self.batches) if hi is None else hi
        outs = [np.asarray(run(x)) for x, _ in self.batches[lo:hi]]
        out = np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)
        return out.reshape(len(out), -1)

    def _per_sample(self, out: np.ndarray, start: int, stop: int) -> np.ndarray:
        labels = None if self.labels is None else self.labels[start:stop]
        return PER_SAMPLE[self.metric](out, labels, self.ref_pred[start:stop]).astype(np.float64)

    def _value(self, out: np.ndarray, samples: np.ndarray | None) -> float:
        if self.metric_fn is not None:
            return float(self.metric_fn(out, self.labels))
        return float(samples.mean())

    # -- API

    def drop(self, value: float) -> float:
        return self.baseline - value

    def score(self, plan: Mapping, *, tolerance: float | None = None) -> Score:
        """Score ``plan``; with ``tolerance`` (absolute drop), reject early when clearly outside."""
        t0 = time.perf_counter()
        self.plans_scored += 1
        run = lambda x: self.run_plan(plan, x)  # noqa: E731
        if tolerance is not None and self.metric_fn is None and self.screen_batches < len(self.batches):
            first = self._outputs(run, 0, self.screen_batches)
            s = self._per_sample(first, 0, self.n_screen)
            b = self.baseline_samples[: self.n_screen]
            d = float(b.mean() - s.mean())
            discordant = float(np.mean(s != b))
            se = math.sqrt(max(discordant, 1.0 / self.n_screen) / self.n_screen)
            self.evaluations += self.n_screen / self.n
            if d - tolerance > self.z * se:
                self.screened_out += 1
                dt = time.perf_counter() - t0
                self.seconds += dt
                return Score(float(s.mean()), self.n_screen, True, dt)
            rest = self._outputs(run, self.screen_batches)
            self.evaluations += (self.n - self.n_screen) / self.n
            out = np.concatenate([first, rest])
        else:
            out = self._outputs(run)
            self.evaluations += 1.0
        samples = None if self.metric_fn else self._per_sample(out, 0, self.n)
        dt = time.perf_counter() - t0
        self.seconds += dt
        return Score(self._value(out, samples), self.n, False, dt)

    def accepts(self, plan: Mapping, tolerance: float) -> tuple[bool, Score]:
        s = self.score(plan, tolerance=tolerance)
        return (not s.screened_out and self.drop(s.value) <= tolerance + 1e-12), s
