"""Fractional lengths chosen by the network's output error on calibration data (``--refine``).

Dynamic fixed point gives each group its fractional length from that group's own range (thesis
eq. 5.2, or the ``mse`` rule on its histogram): each choice is made alone, on how well the group
itself is represented. What matters is the network's output: a layer output read by a ReLU and a
pooling loses less to clipping than its histogram suggests, a weight tensor feeding a sensitive
layer needs finer steps than its mean squared error asks for. The thesis picks the integer /
fractional split of static fixed point by scoring candidates on data (4.4.1); here every dfp
group's length is moved by one step (coarser or finer) and kept when the network's output on
the calibration images moves closer to FP32's (mean squared error of the outputs), group after
group in graph order (coordinate descent: a move in one direction is followed while it helps).

Groups that must share a format move together: the layer outputs filling one Concat, and an
input that reads another layer's output through ReLU / pooling / reshapes takes that output's
format again after each move (passes.grid_ties). Only fixed-point formats move (``fixed``,
``ufixed``, one per tensor); per-channel weights keep their per-channel rule.

Plans run on the :class:`~ristretto_onnx.runtime.simulator.Simulator`: activation formats are
session inputs there, so only weight moves build sessions. Calibrate never on scored images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ristretto_onnx.formats import Fixed, Format, UFixed

Plan = dict[str, Format | None]

#: A move is kept when it lowers the output error by at least this fraction.
MIN_GAIN = 1e-3
#: Steps tried in one direction at most (the first step decides the direction).
MAX_STEPS = 3


def moved(fmt: Format, step: int) -> Format:
    """``fmt`` with its fractional length moved by ``step`` (positive: finer steps, less range)."""
    if isinstance(fmt, UFixed):
        return UFixed(fmt.bits, fmt.frac_bits + step)
    return Fixed(fmt.bits, fmt.frac_bits + step)


def movable(fmt: Format | None) -> bool:
    return type(fmt) in (Fixed, UFixed) and fmt.bits < 32


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def output_error(run: Callable[[Mapping, np.ndarray], np.ndarray], plan: Mapping, batches: Sequence[np.ndarray],
                 reference: Sequence[np.ndarray], objective: str = "kl") -> float:
    """How far the network's outputs under ``plan`` are from FP32's: ``kl``, the mean
    Kullback-Leibler divergence of the softmax of the outputs (classifiers, one row of logits
    per image) from FP32's, or ``mse``, the mean squared difference of the outputs."""
    total, count = 0.0, 0
    for x, ref in zip(batches, reference):
        out = np.asarray(run(plan, x), np.float64)
        if objective == "kl":
            lp, lq = _log_softmax(ref.reshape(len(ref), -1)), _log_softmax(out.reshape(len(out), -1))
            total += float((np.exp(lp) * (lp - lq)).sum())
            count += len(out)
        else:
            total += float(np.square(out - ref).sum())
            count += out.size
    return total / max(count, 1)


def refine_plan(plan: Mapping[str, Format | None], groups: Sequence[str], run: Callable, batches: Sequence[np.ndarray],
                reference: Sequence[np.ndarray], *, tie: Callable[[Plan], Plan] = dict,
                units: Mapping[str, tuple[str, ...]] | None = None, sweeps: int = 1, objective: str = "kl",
                alternatives: Mapping[str, Format] | None = None,
                log: Callable[[str], None] | None = None) -> tuple[Plan, dict]:
    """Coordinate descent of the module docstring over ``groups`` (graph order).

    ``plan`` is the plan before ``tie`` (the grid ties of passes.grid_ties); ``units`` maps a
    group to the groups that move with it (Concat members). Returns the tied plan and a record
    ``{"error_before", "error_after", "moves": {group: step}}``. ``alternatives``: a format
    each group may switch to first (per-channel weights for ``--weight-granularity auto``),
    kept when it lowers the error; ``moves`` then says ``"alternative"``.
    """
    base = dict(plan)
    best = output_error(run, tie(base), batches, reference, objective)
    record = {"error_before": best, "moves": {}}
    done: set[str] = set()
    for _ in range(sweeps):
        for gid in groups:
            alt = (alternatives or {}).get(gid)
            if alt is not None and base.get(gid) is not None and alt != base[gid] and gid not in record["moves"]:
                cand = {**base, gid: alt}
                err = output_error(run, tie(cand), batches, reference, objective)
                if err < best * (1.0 - MIN_GAIN):
                    base, best = cand, err
                    record["moves"][gid] = "alternative"
                    if log is not None:
                        log(f"refine {gid}: {alt}, output error {best:.4g}")
            members = tuple((units or {}).get(gid, (gid,)))
            if gid in done or not all(movable(base.get(m)) for m in members):
                continue
            done.update(members)
            if any(tie({**base, m: moved(base[m], 1)})[m] != moved(base[m], 1) for m in members):
                continue  # takes its format from another group (round once): that one moves
            total = 0
            for direction in (1, -1):
                steps = 0
                while steps < MAX_STEPS:
                    cand = {**base, **{m: moved(base[m], direction) for m in members}}
                    err = output_error(run, tie(cand), batches, reference, objective)
                    if err >= best * (1.0 - MIN_GAIN):
                        break
                    base, best, steps = cand, err, steps + 1
                total += direction * steps
                if steps:
                    break  # the other direction was the way back
            if total:
                record["moves"][gid] = total
                if log is not None:
                    log(f"refine {gid}: {total:+d} fractional bits, output error {best:.4g}")
        done.clear()
    record["error_after"] = best
    return tie(base), record
