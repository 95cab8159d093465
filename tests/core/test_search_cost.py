"""The cheaper search (sequential scoring, provisional category widths) on networks with known
per-image results: what it decides, what it costs, and that it reaches the exhaustive plan."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ristretto_onnx.formats import Fixed
from ristretto_onnx.schemes import DynamicFixedPoint
from ristretto_onnx.search import BitSearch
from tests.core.per_image import Oracle, PerImageNet
from tests.core.test_search import RANGES


def random_net(seed: int, n: int = 2000) -> PerImageNet:
    rng = np.random.default_rng(seed)
    base = rng.random(n) < rng.uniform(0.6, 0.95)
    need = {}
    for r in RANGES:
        scale = rng.uniform(0.3, 3.0)
        need[r.group] = np.clip(np.round(rng.exponential(scale, n) * rng.uniform(0.5, 2.0)) + rng.integers(1, 5), 0, 18)
    return PerImageNet(need, base)


def run(net, tol, **scorer_kwargs):
    """The search on ``net``, and every verdict the scorer gave, with its plan."""
    verdicts = []
    scorer = net.scorer(batch=100, min_screen=200, **scorer_kwargs)
    decide = scorer.decide

    def recording(plan, tolerance, **kw):
        d = decide(plan, tolerance, **kw)
        verdicts.append((dict(plan), d))
        return d

    scorer.decide = recording
    out = BitSearch(scorer, DynamicFixedPoint(), RANGES, tol).run()
    return out, scorer, verdicts


def wrong_verdicts(net, verdicts, tol):
    """(provisional widths the full set rejects, early rejections the full set would accept)."""
    likely = sum(d.verdict == "likely" and net.drop(p) > tol + 1e-12 for p, d in verdicts)
    rejected = sum(d.verdict == "reject" and net.drop(p) <= tol + 1e-12 for p, d in verdicts)
    return likely, rejected


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), tol=st.sampled_from([0.005, 0.01, 0.02, 0.05]))
def test_cheaper_search_holds_and_reaches_the_exhaustive_plan(seed, tol):
    net = random_net(seed)
    out, scorer, verdicts = run(net, tol)
    assert net.drop(out.plan) <= tol + 1e-12  # the result holds on the full set
    assert out.final.n == net.n and not out.final.provisional
    # every verdict is the full set's: acceptances on the full set, rejections settled
    for t in out.trials:
        if t.accepted:
            assert t.n == net.n
    oracle = Oracle(net, scorer.n_screen)
    ref = BitSearch(oracle, DynamicFixedPoint(), RANGES, tol).run()
    wrong_likely, wrong_reject = wrong_verdicts(net, verdicts, tol)
    assert ref.plan == out.plan or wrong_likely or wrong_reject, (seed, tol)


def two_groups(base, need_a, need_b=None):
    need_b = np.zeros(len(base)) if need_b is None else need_b
    return PerImageNet({"c1/inputs": need_a, "fc/weights": need_b}, base)


def test_a_plan_is_never_scored_twice_on_an_image():
    net = random_net(3)
    scorer = net.scorer(batch=100, min_screen=200)
    plan = {r.group: None for r in RANGES}
    plan.update(BitSearch(scorer, DynamicFixedPoint(), RANGES, 0.01)._plan({"fc/weights": 16}, {}))
    first = scorer.decide(plan, 0.05, provisional=True)
    assert first.verdict == "likely" and first.score.n == scorer.n_screen == 500
    assert scorer.evaluations == 0.25
    full = scorer.decide(plan, 0.05)
    assert full.verdict == "accept" and full.score.n == 2000 and not full.score.provisional
    assert scorer.evaluations == 1.0 and scorer.plans_scored == 1
    assert scorer.decide(plan, 0.05, provisional=True).verdict == "accept" and scorer.evaluations == 1.0


def test_exact_rejection_when_the_rest_cannot_save_the_plan():
    """No statistics (z huge): rejected at the first batch after which even all-correct rest fails."""
    n = 1000
    base = np.ones(n, bool)
    need = np.where(np.arange(n) < 300, 16, 0)  # the first 300 images break below 16 bits
    net = two_groups(base, need)
    scorer = net.scorer(batch=50, min_screen=100, z=1e9)

    d = scorer.decide({"c1/inputs": Fixed(8, 4), "fc/weights": None}, 0.1)
    # drop > 0.1 is certain once more than 100 images are wrong: after 101 wrong -> batch ending at 150
    assert d.verdict == "reject" and d.score.n == 150 and d.score.screened_out
    assert scorer.evaluations == 0.15


def test_early_rejection_looks_and_never_accepts_early():
    n = 4000
    rng = np.random.default_rng(0)
    base = rng.random(n) < 0.8
    need = np.where(rng.random(n) < 0.1, 16, 0)  # 10 % of the images need 16 bits: drop ~0.08
    net = two_groups(base, need)
    scorer = net.scorer(batch=100, min_screen=200)

    bad = scorer.decide({"c1/inputs": Fixed(8, 4), "fc/weights": None}, 0.01)
    assert bad.verdict == "reject" and bad.score.n == 200  # the first look (min_screen images)
    good = scorer.decide({"c1/inputs": Fixed(16, 4), "fc/weights": None}, 0.01)
    assert good.verdict == "accept" and good.score.n == n
    none = net.scorer(batch=100, min_screen=200, screen_fraction=1.0)
    assert none.decide({"c1/inputs": Fixed(8, 4), "fc/weights": None}, 0.01).score.n == n


def test_cheaper_search_costs_less_than_the_exhaustive_one():
    """Mean cost over random networks: sequential scoring and provisional widths save over half."""
    cheap = full = 0.0
    for seed in range(20):
        net = random_net(seed)
        cheap += run(net, 0.01)[1].evaluations
        scorer = net.scorer(batch=100, min_screen=200, screen_fraction=1.0)
        BitSearch(scorer, DynamicFixedPoint(), RANGES, 0.01).run()
        full += scorer.evaluations
    assert cheap < 0.6 * full
