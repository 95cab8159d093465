"""Issue 16: the per-category binary searches are independent and interleaved. Each round announces
the next probe of every unfinished category together (what a cluster scores concurrently), and
every category probes exactly the widths it probes when searched alone."""

from __future__ import annotations

import numpy as np

from ristretto_onnx.schemes import DynamicFixedPoint, StaticFixedPoint
from ristretto_onnx.scoring import Scorer
from ristretto_onnx.search import BitSearch
from ristretto_onnx.stats import category_groups
from tests.core.per_image import PerImageNet
from tests.core.test_search import RANGES
from tests.core.test_search_cost import random_net

CATEGORIES = ("activations", "conv_weights", "fc_weights")


class Announced:
    """A local plan runner that records what the scorer announces (as a cluster runner would get it)."""

    def __init__(self, net: PerImageNet) -> None:
        self.net = net
        self.announced: list[list] = []

    def __call__(self, plan, x):
        return self.net.run_plan(plan, x)

    def ahead(self, plans, depth):
        self.announced.append([plan for plan, _ in plans])


def category_of(plan) -> str:
    quantized = {g for g, f in plan.items() if f is not None}
    (cat,) = [c for c in CATEGORIES if quantized == {r.group for r in category_groups(RANGES, c)}]
    return cat


def probes(trials, category: str) -> list[int]:
    return [t.bits for t in trials if t.stage == "category" and t.what.startswith(category)]


def test_categories_are_announced_together_and_probe_what_they_probe_alone():
    net = random_net(7)
    runner = Announced(net)
    scorer = Scorer(net.batches(100), runner, net.run_float, min_screen=200, ahead=runner.ahead)
    search = BitSearch(scorer, DynamicFixedPoint(), RANGES, 0.01)
    choices = search.search_categories(CATEGORIES)

    # the first announcement holds the first probe of every category (the middle of 2..16)
    first = runner.announced[0]
    assert sorted(category_of(p) for p in first) == sorted(CATEGORIES)
    assert {p[r.group].bits for p in first for r in RANGES if p[r.group] is not None} == {9}
    # an announcement spans every category still searching (all three until one finishes)
    spans = [len({category_of(p) for p in plans}) for plans in runner.announced]
    assert spans[:3] == [3, 3, 3] and spans == sorted(spans, reverse=True)
    # decisions go round-robin: round r decides the r-th probe of every category that has one
    order = [c for t in search.trials for c in CATEGORIES if t.what.startswith(c)]
    each = {c: probes(search.trials, c) for c in CATEGORIES}
    assert order == [c for r in range(max(map(len, each.values()))) for c in CATEGORIES if len(each[c]) > r]

    # each category alone (fresh scorer, no other category searched): the same probes and choice
    for c in CATEGORIES:
        alone = BitSearch(net.scorer(batch=100, min_screen=200), DynamicFixedPoint(), RANGES, 0.01)
        assert alone.search_category(c) == choices[c]
        assert probes(alone.trials, c) == probes(search.trials, c)


def test_the_whole_search_does_not_depend_on_announcements():
    """Announcing is a hint: the same net searched with and without it gives equal trials and plan."""
    for seed, scheme in ((3, DynamicFixedPoint()), (11, StaticFixedPoint())):
        net = random_net(seed)
        runner = Announced(net)
        hinted = Scorer(net.batches(100), runner, net.run_float, min_screen=200, ahead=runner.ahead)
        with_hint = BitSearch(hinted, scheme, RANGES, 0.01).run()
        plain = BitSearch(net.scorer(batch=100, min_screen=200), scheme, RANGES, 0.01).run()
        assert with_hint.trials == plain.trials and with_hint.plan == plain.plan
        assert len(runner.announced) > 0


def test_a_category_that_never_holds_is_probed_up_to_max_bits_alone():
    n = 1000
    base = np.ones(n, bool)
    need = {r.group: np.zeros(n) for r in RANGES}
    need["fc/weights"] = np.full(n, 99)  # fc weights break at any width
    net = PerImageNet(need, base)
    search = BitSearch(net.scorer(batch=100, min_screen=200), DynamicFixedPoint(), RANGES, 0.01)
    choices = search.search_categories(CATEGORIES)
    assert choices["fc_weights"].bits is None
    assert [choices[c].bits for c in ("activations", "conv_weights")] == [2, 2]
    assert probes(search.trials, "fc_weights") == [9, 13, 15, 16]


class Counting(BitSearch):
    """Counts the plans the search builds and the plans it decides."""

    built = tried = 0

    def _plan(self, group_bits, variants):
        self.built += 1
        return super()._plan(group_bits, variants)

    def _try(self, *args, **kwargs):
        self.tried += 1
        return super()._try(*args, **kwargs)


def test_plans_are_built_for_announcements_only_when_a_runner_takes_them():
    """A local scorer has no look-ahead: the search builds only the plans it decides. With one, a
    queued probe's variant plans are built once, not again in every round it waits."""
    net = random_net(7)
    local = Counting(net.scorer(batch=100, min_screen=200), DynamicFixedPoint(), RANGES, 0.01)
    assert not local.scorer.announces
    choices = local.search_categories(CATEGORIES)
    assert local.built == local.tried > 0

    runner = Announced(net)
    hinted = Counting(Scorer(net.batches(100), runner, net.run_float, min_screen=200, ahead=runner.ahead),
                      DynamicFixedPoint(), RANGES, 0.01)
    assert hinted.search_categories(CATEGORIES) == choices
    probed = {(c, t.bits) for t in hinted.trials for c in CATEGORIES if t.what.startswith(c)}
    assert hinted.built == hinted.tried + len(probed)  # dfp: one variant per width
    assert sum(map(len, runner.announced)) > len(probed)  # announced again while queued, built once
