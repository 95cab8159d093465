"""A progress bar per fine-tuning epoch: batches, loss, last score, best so far, time left.

Shown only where someone watches (stderr is a terminal), like the evaluation bar of
:mod:`ristretto_onnx.runtime.progress`; otherwise every method is a no-op.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager

from ristretto_onnx.runtime.progress import _should_show


class EpochProgress(AbstractContextManager):
    def __init__(self, epochs: int, batches: int, *, show: bool | None = None) -> None:
        self.epochs = epochs
        self.batches = batches
        self.shown = _should_show() if show is None else bool(show)
        self._bar = None
        self._task = None
        self._best = ""
        self._last = ""

    def __enter__(self) -> "EpochProgress":
        if self.shown:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                 console=Console(file=sys.stderr), transient=True)
            self._bar.__enter__()
        return self

    def set_best(self, best: float) -> None:
        self._best = f"best {best:.4f}"

    def start_epoch(self, epoch: int) -> None:
        if self._bar is None:
            return
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(f"epoch {epoch}/{self.epochs}", total=self.batches,
                                        info=self._best)

    def advance(self, loss: float | None) -> None:
        if self._bar is not None and self._task is not None:
            info = f"loss {loss:.4f}  {self._last}  {self._best}" if loss is not None else self._best
            self._bar.update(self._task, advance=1, info=info)

    def end_epoch(self, loss: float | None, score: float, best: float) -> None:
        self._last = f"score {score:.4f}"
        self.set_best(best)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        return None
