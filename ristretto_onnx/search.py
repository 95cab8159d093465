"""The bit-width search of Ristretto's quantization flow (thesis 9.2, fig. 9.1), and beyond it.

1. Per category (layer activations, conv weights, fc weights): a binary search for the smallest
   width whose accuracy stays within the tolerance while the other categories stay in float.
   The categories' searches are independent (each starts in the middle of the width range), so
   they run interleaved: the next probe of every unfinished category is announced together and
   scored concurrently on a cluster, and decided in a fixed round-robin order on any backend.
   Schemes with several formats per width (fixed point's integer/fractional splits, minifloat's
   exponent/mantissa splits) score each variant and keep the best.
2. The combination of the chosen widths; while it breaks the tolerance, the most sensitive
   category (largest drop on its own at its current width) is widened by one bit.
3. With ``granularity="layer"``: a width per layer's weights. Each layer's sensitivity is the drop
   when only its weights lose one more bit; layers are then lowered greedily, cheapest drop per
   saved weight bit first, each step kept only if the whole network still holds the tolerance.

Accuracy is assumed monotone in the width (as the thesis's binary search does), and quantizing
more of the network is assumed not to help. Under these assumptions the search saves most of
its scoring (:class:`~ristretto_onnx.scoring.Scorer` scores each plan only as far as needed):

* A per-category width that holds on the screening part is taken *provisionally*, without
  scoring the rest: the combination that is finally accepted quantizes that category at that
  width or wider, so its acceptance on the full set implies the category's. A width whose drop
  on the screening part breaks the tolerance is scored further, until the full set accepts it
  or it is rejected (exactly, or by early rejection). A provisional width that would fail on
  the full set makes its combination fail, and the category is widened like any other.
* Sensitivities (which category to widen, which layer to lower first) and the choice between a
  width's variants compare drops on the screening part, which every plan scored has.
* Every plan that ends up in the result is accepted on the full set.

With early rejection off (``screen_fraction=1``) the screening part is the full set and this is
exactly the exhaustive search of the list above.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field

from ristretto_onnx.formats import Format
from ristretto_onnx.schemes import Scheme
from ristretto_onnx.scoring import Decision, Score, Scorer, plan_key
from ristretto_onnx.stats import GroupRange, category_groups

Log = Callable[[str], None]


@dataclass(frozen=True)
class Trial:
    """One scored plan: what was tried, its metric, and whether it held the tolerance."""

    stage: str
    what: str
    bits: int | None
    value: float
    drop: float
    accepted: bool
    screened_out: bool
    n: int
    provisional: bool = False


@dataclass(frozen=True)
class CategoryChoice:
    """A category's searched width (``None``: stays float) and its scheme variant."""

    category: str
    bits: int | None
    variant: int | None
    drop: float  # on its own, the rest of the network in float (on the screening part)
    groups: int


@dataclass
class SearchOutcome:
    plan: dict[str, Format | None]
    categories: dict[str, CategoryChoice]
    group_bits: dict[str, int | None]
    final: Score
    trials: list[Trial] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class BitSearch:
    """Runs the search of the module docstring for one scheme on one scorer."""

    def __init__(self, scorer: Scorer, scheme: Scheme, ranges: Sequence[GroupRange], tolerance: float, *,
                 min_bits: int | None = None, max_bits: int | None = None, log: Log | None = None) -> None:
        self.scorer = scorer
        self.scheme = scheme
        self.ranges = list(ranges)
        self.tolerance = tolerance
        self.min_bits = max(scheme.min_bits, min_bits or scheme.min_bits)
        self.max_bits = min(scheme.max_bits, max_bits or scheme.max_bits)
        self.max_bits = max(self.max_bits, self.min_bits)
        self.log = log if log is not None else (lambda msg: None)
        self.trials: list[Trial] = []
        self._logged: set = set()
        self._variants: dict[tuple[str, int], list[dict[str, Format | None]]] = {}

    # -- scoring helpers

    def _plan(self, group_bits: Mapping[str, int | None], variants: Mapping[str, int | None]) -> dict[str, Format | None]:
        plan: dict[str, Format | None] = {r.group: None for r in self.ranges}
        for r in self.ranges:
            bits = group_bits.get(r.group)
            if bits is not None and r.category is not None:
                plan.update(self.scheme.formats([r], bits, variants.get(r.category)))
        return plan

    def _try(self, stage: str, what: str, bits: int | None, group_bits, variants, *,
             provisional: bool = False) -> tuple[bool, Score]:
        """Decide one plan (the scorer resumes plans it has seen; each call is logged once)."""
        plan = self._plan(group_bits, variants)
        d: Decision = self.scorer.decide(plan, self.tolerance, provisional=provisional)
        s = d.score
        trial = Trial(stage, what, bits, s.value, self.scorer.paired_drop(s), d.accepted, s.screened_out, s.n,
                      d.verdict == "likely")
        seen = (plan_key(plan), stage, s.n)
        if seen not in self._logged:
            self._logged.add(seen)
            self.trials.append(trial)
            state = {"accept": "  ok", "likely": "  ok on the screen", "reject": ""}[d.verdict]
            self.log(f"{stage:<9} {what:<28} {('-' if bits is None else f'{bits}-bit'):>6}  "
                     f"metric {s.value:.4f}  drop {trial.drop:+.4f} on {s.n} images"
                     f"{'  (screened out)' if s.screened_out else ''}{state}")
        return d.ok, s

    def _announce(self, plans: Callable[[], list]) -> None:
        """Independent plans asked for next (:meth:`Scorer.ahead`: scored concurrently on a
        cluster); ``plans()`` builds them, only when the scorer's runner takes announcements."""
        if self.scorer.announces:
            self.scorer.ahead(plans())

    def _sensitivity(self, s: Score) -> float:
        return self.scorer.screen_drop(s)

    def _category_bits(self, category: str, bits: int) -> dict[str, int]:
        return {r.group: bits for r in category_groups(self.ranges, category)}

    # -- stage 1: per category, the categories' binary searches interleaved

    def _variant_plans(self, category: str, bits: int) -> list[dict[str, Format | None]]:
        """The plans of the category alone at ``bits``, one per scheme variant (built once: the
        interleaved search announces a queued probe's plans every round until it is decided)."""
        key = (category, bits)
        if key not in self._variants:
            variants = self.scheme.variants(category_groups(self.ranges, category), bits)
            self._variants[key] = [self._plan(self._category_bits(category, bits), {category: v}) for v in variants]
        return self._variants[key]

    def _best_variant(self, category: str, bits: int, *, announce: bool = True) -> tuple[bool, Score, int | None]:
        """The category alone at ``bits``: provisionally, each variant, the best on the screen.
        ``announce=False``: the caller announced the variants already (with other plans)."""
        groups = category_groups(self.ranges, category)
        best: tuple[bool, Score, int | None] | None = None
        variants = self.scheme.variants(groups, bits)
        if announce:
            self._announce(lambda: self._variant_plans(category, bits))
        for v in variants:
            ok, s = self._try("category", f"{category} {self.scheme.describe(v)}".strip(), bits,
                              self._category_bits(category, bits), {category: v}, provisional=True)
            if best is None or (ok, -self._sensitivity(s)) > (best[0], -self._sensitivity(best[1])):
                best = (ok, s, v)
        assert best is not None
        return best

    def _bisect(self, category: str, start: int | None = None) -> Generator[int, tuple, CategoryChoice]:
        """One category's binary search as a sequence of probes: yields the width it needs next,
        is sent that width's ``(ok, score, variant)``, returns the choice. ``start``: the first
        width to try (default: the middle of the range, which depends on no other category)."""
        groups = category_groups(self.ranges, category)
        results: dict[int, tuple[bool, Score, int | None]] = {}
        lo, hi = self.min_bits, self.max_bits
        while lo < hi:  # the widest width is only scored if nothing narrower holds
            mid = (lo + hi) // 2
            if start is not None:
                mid, start = min(max(start, lo), hi - 1), None
            if mid not in results:
                results[mid] = yield mid
            if results[mid][0]:
                hi = mid
            else:
                lo = mid + 1
        if hi not in results:
            results[hi] = yield hi
        ok, s, v = results[hi]
        if not ok:
            return CategoryChoice(category, None, None, self._sensitivity(s), len(groups))
        return CategoryChoice(category, hi, v, self._sensitivity(s), len(groups))

    def search_category(self, category: str, start: int | None = None) -> CategoryChoice:
        """Binary search for one category's smallest width; ``start``: the first width to try.

        Widths at or above the answer hold on the screening part and cost its images; widths
        below are rejected, at few images when far below.
        """
        return self.search_categories([category], start)[category]

    def search_categories(self, categories: Sequence[str], start: int | None = None) -> dict[str, CategoryChoice]:
        """The categories' binary searches, interleaved: each depends on its own verdicts only.

        The next probe of every unfinished category is known at once, so they are announced
        together (:meth:`Scorer.ahead`: on a cluster, plans of different categories are scored
        concurrently) and then decided one after another, round-robin in category order. The
        order depends on no backend, so the local runner decides the same plans in the same
        order and every decision is the same.
        """
        searches = {c: self._bisect(c, start) for c in categories}
        queue = [(c, next(g)) for c, g in searches.items()]  # every search probes at least once
        choices: dict[str, CategoryChoice] = {}
        while queue:
            self._announce(lambda: [p for c, bits in queue for p in self._variant_plans(c, bits)])
            c, bits = queue.pop(0)
            try:
                queue.append((c, searches[c].send(self._best_variant(c, bits, announce=False))))
            except StopIteration as done:
                choices[c] = done.value
        return {c: choices[c] for c in categories}

    # -- stage 2: combine, widening the most sensitive category until the tolerance holds

    def combine(self, choices: dict[str, CategoryChoice]) -> tuple[dict[str, CategoryChoice], Score]:
        choices = dict(choices)
        while True:
            group_bits = {g: c.bits for c in choices.values() if c.bits is not None
                          for g in self._category_bits(c.category, c.bits)}
            variants = {c.category: c.variant for c in choices.values()}
            ok, s = self._try("combine", "+".join(sorted(k for k, c in choices.items() if c.bits)) or "all float",
                              None, group_bits, variants)
            if ok:
                return choices, s
            widenable = [c for c in choices.values() if c.bits is not None]
            if not widenable:
                return choices, s
            worst = max(widenable, key=lambda c: c.drop)
            if worst.bits >= self.max_bits:
                choices[worst.category] = CategoryChoice(worst.category, None, None, 0.0, worst.groups)
                continue
            nbits = worst.bits + 1
            okc, sc, v = self._best_variant(worst.category, nbits)
            choices[worst.category] = CategoryChoice(worst.category, nbits, v, self._sensitivity(sc), worst.groups)

    # -- stage 3: per-layer widths for weights

    def refine_layers(self, choices: dict[str, CategoryChoice], current: Score) -> tuple[dict[str, int | None], Score]:
        group_bits: dict[str, int | None] = {}
        for c in choices.values():
            if c.bits is not None:
                group_bits.update(self._category_bits(c.category, c.bits))
        variants = {c.category: c.variant for c in choices.values()}
        weights = [r for r in self.ranges if r.role == "weights" and group_bits.get(r.group)]
        # sensitivity: drop when only this layer's weights lose one bit (independent plans)
        self._announce(lambda: [self._plan(dict(group_bits, **{r.group: group_bits[r.group] - 1}), variants)
                                for r in weights if group_bits[r.group] > self.min_bits])
        costs = []
        for r in weights:
            b = group_bits[r.group]
            if b <= self.min_bits:
                continue
            trial = dict(group_bits, **{r.group: b - 1})
            ok, s = self._try("layer", f"{r.group}", b - 1, trial, variants)
            if ok:
                costs.append((max(self._sensitivity(s) - self._sensitivity(current), 0.0) / max(r.size, 1), r))
        costs.sort(key=lambda t: t[0])
        best = current
        for _, r in costs:
            while group_bits[r.group] > self.min_bits:
                trial = dict(group_bits, **{r.group: group_bits[r.group] - 1})
                ok, s = self._try("layer", r.group, trial[r.group], trial, variants)
                if not ok:
                    break
                group_bits, best = trial, s
        return group_bits, best

    # -- the whole search

    def run(self, granularity: str = "group") -> SearchOutcome:
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        cats = [c for c in self.scheme.categories if category_groups(self.ranges, c)]
        choices = self.search_categories(cats)
        seconds["search_categories"] = time.perf_counter() - t
        t = time.perf_counter()
        choices, score = self.combine(choices)
        seconds["combine"] = time.perf_counter() - t
        group_bits: dict[str, int | None] = {}
        for c in choices.values():
            if c.bits is not None:
                group_bits.update(self._category_bits(c.category, c.bits))
        if granularity == "layer":
            t = time.perf_counter()
            group_bits, score = self.refine_layers(choices, score)
            seconds["refine_layers"] = time.perf_counter() - t
        variants = {c.category: c.variant for c in choices.values()}
        plan = self._plan(group_bits, variants)
        return SearchOutcome(plan, choices, group_bits, score, self.trials, seconds)
