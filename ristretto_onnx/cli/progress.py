"""What a long command shows while it works: a live display, plain lines, or nothing.

On a terminal (stderr is a TTY) ``compress`` shows a rich live display — stage, plans scored,
full evaluations so far, elapsed time and the best plan accepted so far — above which the trial
lines scroll. When stderr is not a terminal (CI logs, pipes) it prints the same information as
plain timestamped lines, no escape codes. ``--quiet`` prints nothing while working (pipelines).
The display is fed by :class:`~ristretto_onnx.events.ProgressEvent` objects, not by parsing text.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from ristretto_onnx.events import ProgressEvent


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Reporter:
    """A ``log`` sink for :func:`ristretto_onnx.compress.compress`: ``with Reporter(...) as log``."""

    def __init__(self, *, quiet: bool = False, live: bool | None = None) -> None:
        self.mode = "quiet" if quiet else ("live" if (_is_terminal() if live is None else live) else "plain")
        self.start = time.perf_counter()
        self.current = ProgressEvent("starting")
        self._live = None
        self._console = None

    # -- the log interface

    def __call__(self, message: str) -> None:
        if self.mode == "plain":
            e = self.current
            counts = (f"[{e.plans_scored} plans, {e.evaluations:.1f} evals] "
                      if e.stage == "search" and e.plans_scored is not None else "")
            print(f"[{self._elapsed():7.1f}s] {counts}{message}", file=sys.stderr, flush=True)
        elif self.mode == "live" and self._console is not None:
            self._console.print(message, markup=False, highlight=False)

    def event(self, event: ProgressEvent) -> None:
        prev = self.current  # later stages keep the search's counters and best plan on display
        self.current = dataclasses.replace(
            event, plans_scored=prev.plans_scored if event.plans_scored is None else event.plans_scored,
            evaluations=prev.evaluations if event.evaluations is None else event.evaluations,
            best=event.best or prev.best, scheme=event.scheme or prev.scheme)
        if event.stage == "search":
            return  # its lines arrive through __call__; the live display reads self.current
        if event.stage == "prepare" and self.mode == "plain":
            return  # a model rejected while it is checked gets one error line, nothing before it
        self(event.message)

    # -- the live display

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _render(self):
        from rich.table import Table

        e = self.current
        t = int(self._elapsed())
        grid = Table.grid(padding=(0, 2))
        grid.add_row("stage", e.stage + (f" ({e.scheme})" if e.scheme else ""),
                     "elapsed", f"{t // 60:d}:{t % 60:02d}")
        grid.add_row("plans scored", "-" if e.plans_scored is None else str(e.plans_scored),
                     "full evaluations", "-" if e.evaluations is None else f"{e.evaluations:.1f}")
        grid.add_row("best so far", e.best or "-", "", "")
        return grid

    def __enter__(self) -> "Reporter":
        if self.mode == "live":
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=sys.stderr)
            self._live = Live(get_renderable=self._render, console=self._console, refresh_per_second=4,
                              transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
        return None
