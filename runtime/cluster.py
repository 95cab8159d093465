"""Score plans on a Ray cluster: the data in shards, one actor and one Simulator per shard.

A search scores a dozen or more plans on the same validation set. On one machine that is one
Simulator running every batch; on a cluster the batches are split into contiguous shards, each
held by an actor with its own :class:`~ristretto_onnx.runtime.simulator.Simulator` (CPU or GPU).
Scoring a plan sends the *plan* (a few hundred bytes of format strings), never the model: the
model and each shard travel once, when the actors start, through Ray's object store.

Outputs come back per batch and in order, so the scorer sees exactly the arrays the local
backend would compute (each actor runs the same onnxruntime graph on the same batches), and
every decision of the search is the one the local backend makes on the same data.

Fault tolerance: when an actor dies (a node lost, a process killed), the next call to it fails
with ``RayActorError``; the backend starts a replacement on the same shard (the model and shard
are still in the object store) and runs the lost work again. When the cluster itself is gone, the
error is one line and nothing is written by the caller.

Ray is optional (``pip install 'ristretto-onnx[ray]'``): nothing imports this module unless the
ray backend is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError

#: How often a shard's work is retried on a fresh actor before the run fails.
MAX_RETRIES = 3


def import_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RistrettoError("the ray backend needs Ray: pip install 'ristretto-onnx[ray]'") from None
    return ray


def connect(address: str | None = None, *, workers: int = 2):
    """Join the cluster at ``address`` or start a local one sized for ``workers`` actors."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    try:
        if address:
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        else:
            ray.init(num_cpus=max(1, workers), log_to_driver=False, include_dashboard=False)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
        raise RistrettoError(f"cannot reach the Ray cluster{f' at {address}' if address else ''}: "
                             f"{' '.join(str(e).split())[:200]}") from None
    return ray


def shard_bounds(sizes: Sequence[int], workers: int) -> list[tuple[int, int]]:
    """Split batches (by their image counts) into at most ``workers`` contiguous shards.

    Each cut falls on the batch boundary closest to an even split of the images.
    """
    cum = np.concatenate([[0], np.cumsum(sizes)])
    workers = max(1, min(workers, len(sizes)))
    cuts = [0]
    for k in range(1, workers):
        target = cum[-1] * k / workers
        cut = int(np.argmin(np.abs(cum - target)))
        cuts.append(min(max(cut, cuts[-1] + 1), len(sizes) - (workers - k)))
    cuts.append(len(sizes))
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


class _ShardWorker:
    """Body of the Ray actor: a Simulator and one shard of preprocessed batches."""

    def __init__(self, model_bytes: bytes, batches: list[np.ndarray], threads: int, providers) -> None:
        from ristretto_onnx.runtime.simulator import Simulator

        model = ModelProto()
        model.ParseFromString(model_bytes)
        self.sim = Simulator(model, threads=threads, providers=providers)
        self.batches = batches
        self._key: str | None = None

    def run(self, plan_json: str | None, lo: int, hi: int) -> list[np.ndarray]:
        """Outputs of local batches ``lo..hi`` under the plan (``None``: the model as given)."""
        if plan_json is not None and plan_json != self._key:
            self.sim.set_formats(json.loads(plan_json), replace=True)
            self._key = plan_json
        return [np.asarray(self.sim.run(x)) for x in self.batches[lo:hi]]

    def sessions_built(self) -> int:
        return self.sim.sessions_built

    def ping(self) -> bool:
        return True


class RayBackend:
    """Runs plans on the batches of one dataset, sharded over ``workers`` Ray actors.

    ``run_batches(plan, lo, hi)`` returns the outputs of batches ``lo..hi`` (global indices, in
    order) under ``plan``; :class:`~ristretto_onnx.scoring.Scorer` uses it instead of running
    batch by batch. ``plan`` is a mapping of group (or node) names to formats, or ``None``.
    """

    def __init__(self, model: ModelProto, batches: Sequence[np.ndarray], *, workers: int = 2,
                 address: str | None = None, gpus_per_worker: float = 0.0, threads: int | None = None) -> None:
        if workers < 1:
            raise RistrettoError(f"--workers must be at least 1, got {workers}")
        self.ray = connect(address, workers=workers)
        sizes = [len(x) for x in batches]
        self.bounds = shard_bounds(sizes, workers)
        self.gpus = gpus_per_worker
        cpus = int(self.ray.cluster_resources().get("CPU", workers))
        self.threads = threads or max(1, cpus // len(self.bounds))
        self.providers = None if gpus_per_worker else ["CPUExecutionProvider"]
        self._model_ref = self.ray.put(model.SerializeToString())
        self._shard_refs = [self.ray.put([np.ascontiguousarray(x) for x in batches[a:b]]) for a, b in self.bounds]
        self._actor_cls = self.ray.remote(_ShardWorker)
        self.actors = [self._start(i) for i in range(len(self.bounds))]
        self.restarts = 0

    def _start(self, shard: int):
        opts = {"num_cpus": self.threads if not self.gpus else 1, "max_restarts": 0}
        if self.gpus:
            opts["num_gpus"] = self.gpus
        return self._actor_cls.options(**opts).remote(self._model_ref, self._shard_refs[shard],
                                                      self.threads, self.providers)

    @property
    def workers(self) -> int:
        return len(self.actors)

    def _calls(self, plan_json, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(shard, local lo, local hi) for every shard that holds batches of ``lo..hi``."""
        out = []
        for i, (a, b) in enumerate(self.bounds):
            s, e = max(a, lo), min(b, hi)
            if s < e:
                out.append((i, s - a, e - a))
        return out

    def run_batches(self, plan: Mapping | None, lo: int, hi: int) -> list[np.ndarray]:
        from ristretto_onnx.passes.plan import plan_to_dict

        plan_json = None if plan is None else json.dumps(plan_to_dict(plan), sort_keys=True)
        calls = self._calls(plan_json, lo, hi)
        pending = {i: self.actors[i].run.remote(plan_json, s, e) for i, s, e in calls}
        results: dict[int, list[np.ndarray]] = {}
        for i, s, e in calls:
            results[i] = self._get(i, pending[i], plan_json, s, e)
        return [x for i, _, _ in calls for x in results[i]]

    def _get(self, shard: int, ref, plan_json, lo: int, hi: int) -> list[np.ndarray]:
        ray = self.ray
        for attempt in range(MAX_RETRIES + 1):
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError:
                if attempt == MAX_RETRIES:
                    break
                self.restarts += 1
                self.actors[shard] = self._start(shard)
                ref = self.actors[shard].run.remote(plan_json, lo, hi)
            except ray.exceptions.RayError as e:
                raise RistrettoError(f"the Ray cluster failed: {' '.join(str(e).split())[:200]}") from None
        raise RistrettoError(f"shard {shard} failed on {MAX_RETRIES + 1} actors in a row; giving up")

    def sessions_built(self) -> int:
        return int(sum(self.ray.get([a.sessions_built.remote() for a in self.actors])))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
