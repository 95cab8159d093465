"""Structured progress events: what a long job is doing, for displays that are not strings.

``compress`` (thesis fig. 9.1: prepare, range analysis, the bit-width search, write) reports
through a ``log`` callable that takes one line of text. A display that wants more — a progress
bar with the stage, plans scored, full evaluations and the best plan so far — gives a ``log``
object that also has an ``event(ProgressEvent)`` method; :func:`emit` calls it when present, and
plain callables keep receiving lines only. Nothing here prints.

The last event is also kept in :data:`last` so that an interrupted run (SIGINT/SIGTERM) can say
what it was doing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  # prepare, ranges, baseline, search, write, test, done
    message: str = ""
    scheme: str | None = None
    plans_scored: int | None = None
    evaluations: float | None = None  # in full passes over the evaluation data
    best: str | None = None  # the best accepted plan so far, in words

    def describe(self) -> str:
        parts = [self.stage + (f" {self.scheme}" if self.scheme else "")]
        if self.plans_scored is not None:
            parts.append(f"{self.plans_scored} plans scored")
        if self.evaluations is not None:
            parts.append(f"{self.evaluations:.1f} full evaluations")
        return ", ".join(parts)


#: The most recent event of this process (for "interrupted during ..." messages).
last: ProgressEvent | None = None


def emit(log: Callable[[str], None] | None, event: ProgressEvent) -> None:
    """Send ``event`` to ``log.event`` if the sink has one (always remembered in :data:`last`)."""
    global last
    last = event
    handler = getattr(log, "event", None)
    if callable(handler):
        handler(event)


def search_log(log: Callable[[str], None] | None, scorer: Any, search: Any, scheme: str) -> Callable[[str], None]:
    """A ``log`` for one :class:`~ristretto_onnx.search.BitSearch`: each trial line is forwarded
    after a ``search`` event with the scorer's counters and the best accepted trial."""

    def forward(message: str) -> None:
        best = None
        accepted = [t for t in getattr(search, "trials", ()) if getattr(t, "accepted", False)]
        if accepted:
            t = accepted[-1]
            bits = "" if t.bits is None else f" {t.bits}-bit"
            best = f"{t.stage} {t.what}{bits} (metric {t.value:.4f})"
        emit(log, ProgressEvent("search", message, scheme, scorer.plans_scored, scorer.evaluations, best))
        if log is not None:
            log(message)

    return forward
