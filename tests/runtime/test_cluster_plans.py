"""How plans travel to the actors (no Ray needed: the runner's driver side with stand-in actors):
each actor gets a plan's formats once, later batches name the plan by number, a replacement actor
gets them again; and the scorer's one adapter between local and cluster runners."""

from __future__ import annotations

import json

import numpy as np

from ristretto_onnx.formats import Fixed
from ristretto_onnx.runtime.cluster import RayRunner
from ristretto_onnx.scoring import by_batch, plan_key


class _Errors:
    RayActorError = type("RayActorError", (Exception,), {})
    RayTaskError = type("RayTaskError", (Exception,), {})
    RayError = Exception


class _Ray:
    exceptions = _Errors

    def get(self, ref):
        if ref[0] == "dead":
            raise _Errors.RayActorError()
        return ref


class _Actor:
    def __init__(self, log: list, name: str, dead: bool = False) -> None:
        self.log, self.name, self.dead = log, name, dead
        self.run = self

    def remote(self, number, text, k):
        self.log.append((self.name, number, text is not None, k))
        return ("dead" if self.dead else "ok", self.name, number, text, k)


def _runner(workers: int = 2, n: int = 4) -> tuple[RayRunner, list]:
    """A RayRunner's driver side over ``n`` batches, actors replaced by recorders."""
    log: list = []
    r = object.__new__(RayRunner)
    r.ray, r.n = _Ray(), n
    r.shards = [list(range(i, n, workers)) for i in range(workers)]
    r.owner = {k: i for i, ks in enumerate(r.shards) for k in ks}
    r.actors = [_Actor(log, f"a{i}") for i in range(workers)]
    r.restarts = 0
    r._pending, r._current, r._ahead, r._plans, r._sent = {}, (), [], {}, set()
    return r, log


PLAN_A = {"c1/weights": Fixed(8, 6), "fc/weights": None}
PLAN_B = {"c1/weights": Fixed(4, 2), "fc/weights": Fixed(4, 3)}


def test_a_plans_formats_go_to_each_actor_once_then_by_number():
    r, log = _runner()
    for k in range(4):
        assert r.run_batch(PLAN_A, k)[4] == k
    r.run_batch(PLAN_B, 0)  # (batch 1 of it fetched ahead, on the other actor)
    r.run_batch(None, 1)  # the FP32 model: no plan
    first = [(actor, number) for actor, number, with_text, _ in log if with_text]
    assert first == [("a0", 0), ("a1", 0), ("a0", 1), ("a1", 1)]
    assert len(log) == 8 and {number for _, number, _, _ in log} == {0, 1, None}
    number, text = r._plans[plan_key(PLAN_A)]
    assert number == 0 and json.loads(text) == {"c1/weights": "fixed:8:6", "fc/weights": None}
    # the same formats as another mapping (a float group left out) are the same plan
    assert r._key({"c1/weights": Fixed(8, 6)}) == plan_key(PLAN_A) and len(r._plans) == 2


def test_a_replacement_actor_gets_the_formats_again():
    r, log = _runner()
    r.actors[1].dead = True  # it dies with batches 1 and 3 queued on it
    r._start = lambda shard: _Actor(log, f"new{shard}")
    r.run_batch(PLAN_A, 0)
    r.run_batch(PLAN_A, 1)  # queued on the dead actor: replaced, sent again
    out = r.run_batch(PLAN_A, 3)
    assert out[:2] == ("ok", "new1") and r.restarts == 1
    new_calls = [c for c in log if c[0] == "new1"]
    assert sorted(k for *_, k in new_calls) == [1, 3]
    assert new_calls[0][2] and not any(c[2] for c in new_calls[1:])  # formats with the first call only


def test_the_scorer_asks_a_cluster_runner_by_number_and_a_local_one_with_inputs():
    batches = [(np.full((2, 1), k, np.float32), None) for k in range(3)]

    def local(plan, x):
        return x * 10

    local_by_batch = by_batch(local, batches)
    assert np.array_equal(local_by_batch(PLAN_A, 2), np.full((2, 1), 20.0))
    float_by_batch = by_batch(lambda x: x + 1, batches)
    assert np.array_equal(float_by_batch(1), np.full((2, 1), 2.0))
    r, _ = _runner(n=3)
    assert by_batch(r, batches) == r.run_batch and by_batch(r.float_runner(), batches)(2)[4] == 2
