"""The pass contract: a transformation is a small named callable returning ``(graph, changed)``.

Every graph transformation (fold BN, insert quantizer slots, set formats, and the lowering
rules of :mod:`ristretto_onnx.runtime.lowering`) is a :class:`Transformation`: it edits the
graphsurgeon graph it is given and says whether it changed anything. A pipeline is a plain list
of transformations read top to bottom and run by :func:`run_pipeline`; an error raised inside a
pass reaches the user as one line naming the pass (``pass fold_batchnorm: ...``).

Read-only analyses (find layers, concat ties, clip bounds, in :mod:`ristretto_onnx.passes.analysis`)
are plain functions of a graph that return data; they are not transformations and never edit the
graph they read, so the range and search stages may ask them anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from ristretto_onnx.errors import RistrettoError


@dataclass(frozen=True)
class PassResult:
    """What a transformation returns: the graph (edited in place) and whether it changed."""

    graph: gs.Graph
    changed: bool


class Transformation:
    """Base of every graph transformation: subclasses set ``name`` and implement :meth:`apply`."""

    name: str = "transformation"

    def apply(self, graph: gs.Graph) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, graph: gs.Graph) -> PassResult:
        try:
            return self.apply(graph)
        except RistrettoError as e:
            if str(e).startswith("pass "):
                raise
            raise RistrettoError(f"pass {self.name}: {e}") from None

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


def run_pipeline(graph: gs.Graph, passes: Iterable[Transformation], *,
                 until_fixed_point: bool = False, max_rounds: int = 100) -> PassResult:
    """Apply ``passes`` in order; with ``until_fixed_point``, repeat the list until no pass
    changes the graph (at most ``max_rounds`` times)."""
    passes = list(passes)
    changed_any = False
    for _ in range(max_rounds if until_fixed_point else 1):
        changed = False
        for p in passes:
            changed |= p(graph).changed
        changed_any |= changed
        if not changed:
            break
    return PassResult(graph, changed_any)
