"""A progress bar for long evaluations, silent where nobody is watching.

A bar is shown only when stderr is a terminal and the caller did not ask for quiet output: CI
logs, pipes and ``--json`` consumers get no escape codes. The bar shows images, images/s and the
time left, which is what a user wants from an evaluation that takes minutes.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager


class Progress(AbstractContextManager):
    """``with Progress(total, "eval") as p: p.advance(n)``; a no-op when not shown."""

    def __init__(self, total: int, description: str = "evaluating", *, show: bool | None = None) -> None:
        self.total = total
        self.description = description
        self.show = _should_show() if show is None else bool(show)
        self._bar = None
        self._task = None

    def __enter__(self) -> "Progress":
        if self.show:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeRemainingColumn)

            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                console=Console(file=sys.stderr), transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, rate="")
        return self

    def advance(self, n: int, rate: float | None = None) -> None:
        if self._bar is not None:
            text = f"{rate:,.0f} img/s" if rate else ""
            self._bar.update(self._task, advance=n, rate=text)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        return None


def _should_show() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
