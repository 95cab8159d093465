"""A synthetic network whose per-image results are known: the real Scorer and BitSearch run on it.

Each image has, per group, the narrowest width at which quantizing that group still leaves the
image classified as the FP32 model classifies it (``need``); an image the FP32 model gets right
stays right under a plan iff every quantized group is at least as wide as the image needs. This
is monotone in every width, the assumption the search makes. The "model" takes image indices and
returns two logits per image (class 0 is the label of every image).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ristretto_onnx.scoring import Decision, Score, Scorer


class PerImageNet:
    def __init__(self, need: Mapping[str, np.ndarray], base: np.ndarray) -> None:
        self.need = {g: np.asarray(v) for g, v in need.items()}
        self.base = np.asarray(base, bool)
        self.n = len(self.base)

    def correct(self, plan: Mapping, idx: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(self.n) if idx is None else idx
        ok = self.base[idx].copy()
        for g, fmt in plan.items():
            if fmt is not None:
                ok &= fmt.bits >= self.need[g][idx]
        return ok

    @staticmethod
    def _logits(ok: np.ndarray) -> np.ndarray:
        return np.stack([ok, ~ok], axis=1).astype(np.float32)

    def run_plan(self, plan: Mapping, x: np.ndarray) -> np.ndarray:
        return self._logits(self.correct(plan, x.ravel().astype(np.int64)))

    def run_float(self, x: np.ndarray) -> np.ndarray:
        return self._logits(self.base[x.ravel().astype(np.int64)])

    def batches(self, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        idx = np.arange(self.n)
        return [(idx[i:i + size, None].astype(np.float32), np.zeros(len(idx[i:i + size]), np.int64))
                for i in range(0, self.n, size)]

    def scorer(self, batch: int = 100, **kwargs) -> Scorer:
        return Scorer(self.batches(batch), self.run_plan, self.run_float, **kwargs)

    def drop(self, plan: Mapping, n: int | None = None) -> float:
        c = self.correct(plan)
        n = self.n if n is None else n
        return float(self.base[:n].mean() - c[:n].mean())


class Oracle:
    """The exhaustive reference: every verdict on the full set, screen drops from the same prefix."""

    announces = False  # no runner to announce plans to (Scorer.announces)

    def __init__(self, net: PerImageNet, n_screen: int) -> None:
        self.net, self.n_screen = net, n_screen
        self.baseline = float(net.base.mean())
        self.evaluations = 0.0

    def drop(self, value: float) -> float:
        return self.baseline - value

    def paired_drop(self, score: Score) -> float:
        return self.drop(score.value)

    def screen_drop(self, score: Score) -> float:
        return float(self.net.base[: self.n_screen].mean() - score.screen_value)

    def decide(self, plan, tolerance, *, provisional=False) -> Decision:
        self.evaluations += 1.0
        c = self.net.correct(plan)
        s = Score(float(c.mean()), self.net.n, screen_value=float(c[: self.n_screen].mean()))
        return Decision("accept" if self.drop(s.value) <= tolerance + 1e-12 else "reject", s)
