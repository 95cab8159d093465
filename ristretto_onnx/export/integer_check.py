"""Where the integer model differs from the float-accumulation simulation, and by how much.

The integer model (:mod:`.integer`) computes each layer's sum of products and bias exactly; the
simulated model (thesis 2.6.1.1) adds the same numbers in float32. They agree wherever float32
represents the running sums exactly (every partial sum a multiple of the step below ``2**24``
steps, see :class:`~ristretto_onnx.export.int_program.LayerNote`); where float32 rounds a sum
or its bias add, a rounding decision of the output shift can flip by one step, and the change
travels down the network. :func:`compare` runs both on data and counts the differences.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ristretto_onnx.runtime.session import create_session


@dataclass(frozen=True)
class Agreement:
    """Outputs of the integer model against the simulation on the same inputs."""

    samples: int
    values: int
    differing_values: int
    differing_samples: int
    max_abs_diff: float
    top1_disagreements: int
    top1_sim: float | None
    top1_integer: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def run_batches(model: onnx.ModelProto, batches, *, threads: int | None = None):
    """Yield the first output of ``model`` for each input batch (CPU, exact kernels)."""
    session = create_session(model, providers=["CPUExecutionProvider"], threads=threads)
    name = session.get_inputs()[0].name
    for x in batches:
        yield session.run(None, {name: x})[0]


def compare(sim: onnx.ModelProto, integer: onnx.ModelProto, dataset, *, batch_size: int = 256,
            limit: int | None = None, threads: int | None = None) -> Agreement:
    """Run ``sim`` and ``integer`` on ``dataset`` (a :class:`~ristretto_onnx.data.Dataset`).

    One batch is in memory at a time; only the outputs are kept.
    """
    sessions = [create_session(m, providers=["CPUExecutionProvider"], threads=threads) for m in (sim, integer)]
    names = [s.get_inputs()[0].name for s in sessions]
    outs: tuple[list, list] = ([], [])
    ys, seen = [], 0
    for x, y in dataset.batches(batch_size):
        if limit is not None:
            if seen >= limit:
                break
            x, y = x[: limit - seen], None if y is None else y[: limit - seen]
        for s, name, out in zip(sessions, names, outs):
            out.append(s.run(None, {name: x})[0])
        ys.append(y)
        seen += len(x)
    labels = None if any(y is None for y in ys) else np.concatenate(ys)
    return agreement(np.concatenate(outs[0]), np.concatenate(outs[1]), labels)


def agreement(sim_out: np.ndarray, int_out: np.ndarray, labels: np.ndarray | None = None) -> Agreement:
    """Compare two output arrays of shape (N, classes) (or any (N, ...))."""
    n = len(sim_out)
    diff = sim_out != int_out
    flat_a, flat_b = sim_out.reshape(n, -1), int_out.reshape(n, -1)
    top_a, top_b = flat_a.argmax(axis=1), flat_b.argmax(axis=1)
    acc = (lambda t: float((t == labels).mean())) if labels is not None else (lambda t: None)
    return Agreement(
        samples=n, values=int(diff.size), differing_values=int(diff.sum()),
        differing_samples=int(diff.reshape(n, -1).any(axis=1).sum()),
        max_abs_diff=float(np.abs(sim_out.astype(np.float64) - int_out).max()) if n else 0.0,
        top1_disagreements=int((top_a != top_b).sum()),
        top1_sim=acc(top_a), top1_integer=acc(top_b),
    )
