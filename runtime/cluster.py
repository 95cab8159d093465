"""Score plans on a Ray cluster: the data in shards, one actor and one Simulator per shard.

A search scores a dozen or more plans on the same validation set. On one machine that is one
Simulator running every batch; on a cluster the batches are dealt round-robin to N actors, each
with its own :class:`~ristretto_onnx.runtime.simulator.Simulator` and FP32 session (CPU or GPU),
so any N consecutive batches run in parallel. The scorer still consumes batches one by one in
order (its sequential decisions are unchanged); the runner keeps the next N batches of the
current plan in flight ahead of it. Work done ahead of a decision that stops early is wasted,
never counted: the report's evaluations, plans and decisions are the local backend's.
Scoring a plan sends the *plan* (a few hundred bytes of format strings, once per plan and actor;
later batches name it by number), never the model: the model travels once, when the actors
start, through Ray's object store, and weights in an external-data file not even then (each
actor reads them from the file: :mod:`~ristretto_onnx.runtime.cluster_weights`). The images
do not pass through the driver when the data comes from files: each actor gets a
:class:`~ristretto_onnx.data.shards.ShardSource` (path, its batches' indices, the preprocessing)
and reads its shard itself; only data held in memory (arrays given to the Python API) is
preprocessed by the driver and shipped.

Independent plans (a width's variants, the per-layer sensitivities of the search, the next probe
of every category's binary search) are announced with :meth:`RayRunner.ahead`: their first
batches go into the actors' queues at once, so the cluster works on all of them while the scorer
still takes one plan at a time, in the local order.

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
import weakref
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from onnx import ModelProto

from ristretto_onnx.data.shards import batch_indices, read_batches, shard_source
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.runtime.cluster_weights import Spill, shipped
from ristretto_onnx.scoring import plan_key

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


def deal(n_batches: int, workers: int) -> list[list[int]]:
    """Batch indices of each actor: batch ``k`` goes to actor ``k % workers``."""
    workers = max(1, min(workers, n_batches))
    return [list(range(i, n_batches, workers)) for i in range(workers)]


class _ShardWorker:
    """Body of the Ray actor: a Simulator (when plans are scored), the model run as is, and one
    shard of batches (shipped arrays, or a :class:`~ristretto_onnx.data.shards.ShardSource` read here)."""

    def __init__(self, model_bytes: bytes | None, float_bytes: bytes, shard, threads: int, providers) -> None:
        from ristretto_onnx.runtime.runner import runner_for
        from ristretto_onnx.runtime.simulator import Simulator

        self.sim = None
        if model_bytes is not None:
            self.sim = Simulator(float_bytes_model(model_bytes), threads=threads, providers=providers)
        # the FP32 model (or, for eval, the model given), run as local evaluation runs it
        self.run_model = runner_for(float_bytes_model(float_bytes), providers=providers, threads=threads)
        self.error: str | None = None  # a shard this actor cannot read: reported by run(), not retried
        try:
            self.batches = shard if isinstance(shard, dict) else shard.read()
        except RistrettoError as e:
            self.error, self.batches = str(e), {}
        self.plans: dict[int, dict] = {}  # plan number -> formats, as sent once by the driver
        self._current: int | None = None

    def run(self, plan: int | None, plan_json: str | None, k: int) -> np.ndarray:
        """Output of batch ``k`` under plan number ``plan``; ``None``: the model as given (FP32 for
        a search). ``plan_json``: the plan's formats, sent with the first batch of it this actor
        gets (calls from the driver run in the order sent), else ``None``."""
        if self.error is not None:
            raise RistrettoError(self.error)
        x = self.batches[k]
        if plan is None:
            return np.asarray(self.run_model(x))
        if plan_json is not None:
            self.plans[plan] = json.loads(plan_json)
        if plan != self._current:
            self.sim.set_formats(self.plans[plan], replace=True)
            self._current = plan
        return np.asarray(self.sim.run(x))

    def sessions_built(self) -> int:
        return 0 if self.sim is None else self.sim.sessions_built


def float_bytes_model(data: bytes) -> ModelProto:
    model = ModelProto()
    model.ParseFromString(data)
    return model


class RayRunner:
    """Plan runner for :class:`~ristretto_onnx.scoring.Scorer` on Ray actors (module docstring).

    ``run_batch(plan, k)`` is the output of batch ``k`` under ``plan`` (``None``: ``float_model``);
    :meth:`float_runner` gives the FP32 side. Both prefetch the next ``workers`` batches.
    ``data``: a :class:`~ristretto_onnx.data.Dataset` cut into batches of ``batch_size`` (actors
    read file-backed data themselves), or the preprocessed input of each batch (shipped).
    ``annotated=None``: no plans, only ``float_model`` (``eval``).
    """

    def __init__(self, annotated: ModelProto | None, float_model: ModelProto, data, *, batch_size: int = 256,
                 workers: int = 2, address: str | None = None, gpus_per_worker: float = 0.0,
                 threads: int | None = None) -> None:
        from ristretto_onnx.data import Dataset

        if workers < 1:
            raise RistrettoError(f"--workers must be at least 1, got {workers}")
        self.ray = connect(address, workers=workers)
        cut = batch_indices(data, batch_size) if isinstance(data, Dataset) else None
        self.n = len(cut) if cut is not None else len(data)
        self.shards = deal(self.n, workers)
        self.owner = {k: i for i, ks in enumerate(self.shards) for k in ks}
        self.gpus = gpus_per_worker
        cpus = int(self.ray.cluster_resources().get("CPU", workers))
        self.threads = threads or max(1, cpus // len(self.shards))
        self.providers = None if gpus_per_worker else ["CPUExecutionProvider"]
        # weights on disk travel as references: each actor reads them from the file (cluster_weights)
        self._spill = Spill()
        weakref.finalize(self, self._spill.remove)
        self._model_ref = None if annotated is None else self.ray.put(shipped(annotated, self._spill))
        self._float_ref = self.ray.put(shipped(float_model, self._spill))
        self.read_by_actors = False  # whether the actors read their shards from the data source
        self._shard_refs = [self.ray.put(self._shard(data, cut, ks)) for ks in self.shards]
        self._actor_cls = self.ray.remote(_ShardWorker)
        self.actors = [self._start(i) for i in range(len(self.shards))]
        self.restarts = 0
        self._pending: dict[tuple[Hashable | None, int], object] = {}
        self._current: object = ()
        self._ahead: list[Hashable | None] = []
        self._plans: dict[Hashable, tuple[int, str]] = {}  # plan_key -> (number, JSON), made once
        self._sent: set[tuple[int, int]] = set()  # (shard, plan number): the actor has the plan

    def _shard(self, data, cut, ks: list[int]):
        """What an actor gets for batches ``ks``: a source it reads itself, else the arrays."""
        if cut is None:
            return {k: np.ascontiguousarray(data[k]) for k in ks}
        source = shard_source(data, {k: cut[k] for k in ks})
        if source is not None:
            self.read_by_actors = True
            return source
        return read_batches(data, {k: cut[k] for k in ks})  # in memory only: the driver preprocesses

    @property
    def workers(self) -> int:
        return len(self.actors)

    def _start(self, shard: int):
        opts = {"num_cpus": self.threads if not self.gpus else 1, "max_restarts": 0}
        if self.gpus:
            opts["num_gpus"] = self.gpus
        return self._actor_cls.options(**opts).remote(self._model_ref, self._float_ref, self._shard_refs[shard],
                                                      self.threads, self.providers)

    def _submit(self, key: Hashable | None, k: int):
        shard = self.owner[k]
        if key is None:
            return self.actors[shard].run.remote(None, None, k)
        number, text = self._plans[key]
        first = (shard, number) not in self._sent  # the plan's formats travel once per actor
        self._sent.add((shard, number))
        return self.actors[shard].run.remote(number, text if first else None, k)

    def _key(self, plan: Mapping | None) -> Hashable | None:
        """The plan's identity (:func:`~ristretto_onnx.scoring.plan_key`); its JSON is made once."""
        if plan is None:
            return None
        key = plan_key(plan)
        if key not in self._plans:
            from ristretto_onnx.passes.plan import plan_to_dict

            self._plans[key] = (len(self._plans), json.dumps(plan_to_dict(plan), sort_keys=True))
        return key

    def _fetch(self, key: Hashable | None, start: int, stop: int) -> None:
        for j in range(start, min(stop, self.n)):
            if (key, j) not in self._pending:
                self._pending[(key, j)] = self._submit(key, j)

    def ahead(self, plans: Sequence[tuple[Mapping, int]], depth: int) -> None:
        """The scorer will next ask for these plans, in this order, each from its batch ``start``:
        put their first batches (up to ``depth``, at most one round of the actors) in flight now."""
        self._ahead = [self._key(plan) for plan, _ in plans]
        for (plan, start), key in zip(plans, self._ahead):
            self._fetch(key, start, min(start + self.workers, depth) if start < depth else start + self.workers)

    def run_batch(self, plan: Mapping | None, k: int) -> np.ndarray:
        key = self._key(plan)
        if key != self._current:  # a new plan: work fetched ahead for plans not coming is dropped
            self._ahead = self._ahead[self._ahead.index(key) + 1:] if key in self._ahead else []
            keep = {key, *self._ahead}
            self._pending = {pk: ref for pk, ref in self._pending.items() if pk[0] in keep}
            self._current = key
        self._fetch(key, k, k + self.workers)
        return self._get(key, k, self._pending.pop((key, k)))

    def __call__(self, plan: Mapping, x: np.ndarray) -> np.ndarray:  # pragma: no cover - scorer uses run_batch
        raise RistrettoError("the ray backend scores whole batches by index (run_batch)")

    def float_runner(self) -> _FloatRunner:
        return _FloatRunner(self)

    def _get(self, key: Hashable | None, k: int, ref) -> np.ndarray:
        ray = self.ray
        for attempt in range(MAX_RETRIES + 1):
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError:
                if attempt == MAX_RETRIES:
                    break
                shard = self.owner[k]
                self.restarts += 1
                self.actors[shard] = self._start(shard)
                self._sent = {sent for sent in self._sent if sent[0] != shard}  # a fresh actor knows no plan
                # everything queued on the dead actor is lost: send it again to the new one
                for pk in list(self._pending):
                    if self.owner[pk[1]] == shard:
                        self._pending[pk] = self._submit(*pk)
                ref = self._submit(key, k)
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, RistrettoError):  # e.g. a worker cannot read its shard
                    raise RistrettoError(str(e.cause)) from None
                raise RistrettoError(f"the Ray cluster failed: {' '.join(str(e).split())[:200]}") from None
            except ray.exceptions.RayError as e:
                raise RistrettoError(f"the Ray cluster failed: {' '.join(str(e).split())[:200]}") from None
        raise RistrettoError(f"batch {k} failed on {MAX_RETRIES + 1} actors in a row; giving up")

    @property
    def sessions_built(self) -> int:
        """Sessions of the busiest actor: each sees every plan, as the local Simulator does."""
        return int(max(self.ray.get([a.sessions_built.remote() for a in self.actors])))

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - a lost cluster: nothing left to stop
                pass
        self.actors = []
        self._spill.remove()


class _FloatRunner:
    """The FP32 side of a :class:`RayRunner` (the scorer's baseline pass)."""

    def __init__(self, runner: RayRunner) -> None:
        self.runner = runner

    def run_batch(self, k: int) -> np.ndarray:
        return self.runner.run_batch(None, k)

    def __call__(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - scorer uses run_batch
        raise RistrettoError("the ray backend runs the FP32 model by batch index (run_batch)")
