"""The bit-width search on a synthetic accuracy model: binary search, combination, per-layer."""

from ristretto_onnx.formats import Fixed
from ristretto_onnx.schemes import DynamicFixedPoint, MinifloatScheme, StaticFixedPoint
from ristretto_onnx.stats import GroupRange
from ristretto_onnx.scoring import Decision, Score
from ristretto_onnx.search import BitSearch


class FakeScorer:
    """Accuracy = 0.9 minus a penalty per group that falls as its width grows (monotone)."""

    announces = False  # no runner to announce plans to (Scorer.announces)

    def __init__(self, need: dict[str, int], penalty: float = 0.004) -> None:
        self.need = need  # width from which a group costs nothing
        self.penalty = penalty
        self.baseline = 0.9
        self.calls = 0

    def value(self, plan) -> float:
        loss = 0.0
        for gid, fmt in plan.items():
            if fmt is not None:
                loss += self.penalty * max(0, self.need[gid] - fmt.bits)
        return self.baseline - loss

    def drop(self, v: float) -> float:
        return self.baseline - v

    def paired_drop(self, score: Score) -> float:
        return self.drop(score.value)

    def screen_drop(self, score: Score) -> float:
        return self.drop(score.value)

    def decide(self, plan, tolerance, *, provisional=False):
        self.calls += 1
        v = self.value(plan)
        return Decision("accept" if self.drop(v) <= tolerance + 1e-12 else "reject", Score(v, 100))


RANGES = [
    GroupRange("c1/inputs", "inputs", "conv", 1.0, size=100),
    GroupRange("c1/weights", "weights", "conv", 0.5, (0.5, 0.25), 0, size=1000),
    GroupRange("c1/outputs", "outputs", "conv", 4.0, size=100),
    GroupRange("c2/weights", "weights", "conv", 0.1, size=10000),
    GroupRange("c2/outputs", "outputs", "conv", 2.0, size=100),
    GroupRange("fc/weights", "weights", "fc", 0.3, size=500),
]
NEED = {"c1/inputs": 6, "c1/weights": 5, "c1/outputs": 7, "c2/weights": 3, "c2/outputs": 6, "fc/weights": 4}


def test_binary_search_finds_the_smallest_width_per_category():
    scorer = FakeScorer(NEED, penalty=0.02)  # any width below "need" breaks a 0.01 tolerance
    search = BitSearch(scorer, DynamicFixedPoint(), RANGES, 0.01)
    assert search.search_category("activations").bits == 7
    assert search.search_category("conv_weights").bits == 5
    assert search.search_category("fc_weights").bits == 4
    # a binary search over 2..16 needs at most 1 + ceil(log2(15)) = 5 scores per category
    assert scorer.calls <= 15


def test_combination_widens_the_most_sensitive_category_until_it_holds():
    scorer = FakeScorer(NEED, penalty=0.004)
    out = BitSearch(scorer, DynamicFixedPoint(), RANGES, 0.01).run()
    assert scorer.drop(out.final.value) <= 0.01
    bits = {c: ch.bits for c, ch in out.categories.items()}
    # alone: activations 6, conv weights 3, fc weights 2 bits, which together lose 0.02
    alone = BitSearch(FakeScorer(NEED, 0.004), DynamicFixedPoint(), RANGES, 0.01)
    assert [alone.search_category(c).bits for c in ("activations", "conv_weights", "fc_weights")] == [6, 3, 2]
    assert sum(bits.values()) > 6 + 3 + 2
    assert out.plan["c1/weights"] == Fixed(bits["conv_weights"], bits["conv_weights"] - 0)  # IL(0.5) = 0
    assert out.plan["c1/outputs"].frac_bits == bits["activations"] - (3 - 1)  # IL(4) = 3, outputs one fewer


def test_per_layer_refinement_lowers_cheap_layers_and_keeps_the_tolerance():
    scorer = FakeScorer(NEED, penalty=0.003)
    group = BitSearch(scorer, DynamicFixedPoint(), RANGES, 0.01).run("group")
    layer = BitSearch(scorer, DynamicFixedPoint(), RANGES, 0.01).run("layer")
    def wbits(o):
        return sum(r.size * o.group_bits.get(r.group, 32) for r in RANGES if r.role == "weights")
    assert wbits(layer) < wbits(group)
    assert scorer.drop(layer.final.value) <= 0.01
    # the big layer with small needs (c2, 10000 weights) is the one lowered most
    assert layer.group_bits["c2/weights"] <= 3


def test_a_category_that_fails_even_at_max_bits_stays_float():
    scorer = FakeScorer({**NEED, "fc/weights": 40}, penalty=0.02)
    out = BitSearch(scorer, DynamicFixedPoint(), RANGES, 0.01, max_bits=12).run()
    assert out.categories["fc_weights"].bits is None and out.plan["fc/weights"] is None


def test_schemes_with_variants_score_each_split():
    scorer = FakeScorer(NEED, penalty=0.02)
    choice = BitSearch(scorer, StaticFixedPoint(), RANGES, 0.01).search_category("activations")
    assert choice.bits == 7 and choice.variant is not None
    mf = BitSearch(FakeScorer(NEED, 0.02), MinifloatScheme(), RANGES, 0.01).search_category("conv_weights")
    assert mf.bits == 5 and 1 <= mf.variant <= 4
