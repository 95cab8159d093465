"""Per-channel weights and range rules beyond the thesis: measure them and write docs/PER_CHANNEL.md.

    RISTRETTO_ZOO=/work/shared/zoo python bench/per_channel.py             # full run
    RISTRETTO_ZOO=/work/shared/zoo python bench/per_channel.py --quick     # small prefixes, minutes

For each zoo network, every part (layer inputs, conv and fc weights, layer outputs) is put in
dynamic fixed point of one width (8, 6, 4 bits), weights per tensor (the thesis) or per output
channel, fractional lengths by the max rule (eq. 5.2), percentile:99.99 or mse
(:mod:`ristretto_onnx.range_rules`), and scored once on the test data (no search). Everything
goes through the package's public path (``build_context`` -> ``plan_for`` -> ``Scorer``).

The default range rule of ``compress`` is decided from the per-tensor rows of every network:
a rule replaces ``max`` only if it is never more than :data:`SLACK` below it on any network and
width, and better somewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, md_table  # noqa: E402
from ristretto_onnx import zoo  # noqa: E402
from ristretto_onnx.compress import CompressOptions, build_context  # noqa: E402
from ristretto_onnx.passes.analysis.concat_ties import concat_ties  # noqa: E402
from ristretto_onnx.schemes import DynamicFixedPoint, plan_for
from ristretto_onnx.stats import CATEGORIES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RULES = ("max", "percentile:99.99", "mse")
GRANULARITIES = ("tensor", "channel")
#: Top-1 a rule may lose against max on one (network, width) and still become the default.
SLACK = 0.001

#: onnxruntime's int8 quantizer, as measured for the issue (not re-measured here).
ORT_FIGURES = (
    ("MobileNet-class / ImageNet", "per-tensor int8 weights", "55.0 -> 1.4 (-53.6)"),
    ("MobileNet-class / ImageNet", "per-channel int8 weights", "-2.6"),
    ("SqueezeNet 1.1 / ImageNet (zoo)", "per-tensor MinMax int8", "-1.0"),
    ("SqueezeNet 1.1 / ImageNet (zoo)", "per-tensor Percentile int8", "-0.2"),
)


@dataclass(frozen=True)
class Net:
    """A zoo network and its data: ``test_size`` None = the whole test split."""

    name: str
    widths: tuple[int, ...]
    granularities: tuple[str, ...]
    test_size: int | None
    calib_size: int
    batch_size: int = 256
    calib_is_test: bool = False  # squeezenet: the 1,000 sample images are both


NETWORKS = (
    Net("squeezenet1.1-imagenet", (8, 6), GRANULARITIES, None, 1000, batch_size=50, calib_is_test=True),
    Net("resnet20-cifar10", (8, 6, 4), GRANULARITIES, None, 500),
    Net("lenet-mnist", (8, 6, 4), ("tensor",), None, 500),
    Net("resnet32-cifar10", (8, 6, 4), ("tensor",), None, 500),
    Net("resnet44-cifar10", (8, 6, 4), ("tensor",), None, 500),
)


@dataclass(frozen=True)
class Row:
    network: str
    bits: int
    granularity: str
    rule: str
    top1: float
    fp32: float
    n: int
    seconds: float

    @property
    def drop(self) -> float:
        return self.fp32 - self.top1


def measure(net: Net, quick: bool, log=print) -> tuple[list[Row], dict]:
    """Score every (width, granularity, rule) of ``net`` once; returns rows and facts."""
    test = zoo.model_dataset(net.name, "test")
    test_size = (500 if "imagenet" not in net.name else 100) if quick else net.test_size
    if test_size is not None and test_size < len(test):
        test = test.take(test_size)
    calib_all = zoo.model_dataset(net.name, "calib")
    calib_size = min(100 if quick else net.calib_size, len(calib_all))
    calib = calib_all.subset(calib_size, seed=0)
    t = time.perf_counter()
    ctx = build_context(str(zoo.resolve_model(f"zoo:{net.name}")), test, calib=calib,
                        options=CompressOptions(batch_size=net.batch_size))
    facts = {"n_test": ctx.scorer.n, "n_calib": len(calib), "fp32": ctx.scorer.baseline,
             "context_seconds": round(time.perf_counter() - t, 1), "calib_is_test": net.calib_is_test,
             "ties": sorted(set(concat_ties(ctx.prepared.float_model, ctx.layers).values())),
             "bounded_outputs": sum(r.bounded for r in ctx.ranges)}
    log(f"{net.name}: FP32 top-1 {ctx.scorer.baseline:.4f} on {ctx.scorer.n} images, "
        f"{len(calib)} calibration images ({facts['context_seconds']} s)")
    rows = []
    for bits in net.widths:
        for gran in net.granularities:
            for rule in RULES:
                scheme = DynamicFixedPoint(per_channel=gran == "channel", range_rule=rule)
                plan = plan_for(scheme, ctx.ranges, {c: bits for c in CATEGORIES})
                t = time.perf_counter()
                top1 = ctx.scorer.score(plan).value
                rows.append(Row(net.name, bits, gran, rule, top1, ctx.scorer.baseline, ctx.scorer.n,
                                round(time.perf_counter() - t, 1)))
                log(f"  {bits}-bit {gran:<7} {rule:<17} top-1 {top1:.4f} (drop {100 * rows[-1].drop:+.2f})")
    return rows, facts


def decide_default(rows: Sequence[Row]) -> tuple[str, list[str]]:
    """The range rule for compress: see the module docstring. Returns (rule, reasons)."""
    per_tensor = [r for r in rows if r.granularity == "tensor"]
    base = {(r.network, r.bits): r.top1 for r in per_tensor if r.rule == "max"}
    reasons, winners = [], []
    for rule in RULES[1:]:
        diffs = {(r.network, r.bits): r.top1 - base[(r.network, r.bits)] for r in per_tensor if r.rule == rule}
        worst = min(diffs.items(), key=lambda kv: kv[1])
        gain = sum(diffs.values())
        ok = worst[1] >= -SLACK and gain > 0
        reasons.append(f"`{rule}` vs `max`: worst {100 * worst[1]:+.2f} pts ({worst[0][0]}, {worst[0][1]}-bit), "
                       f"sum of gains {100 * gain:+.2f} pts over {len(diffs)} cases: "
                       f"{'holds everywhere' if ok else 'does not hold everywhere'}")
        if ok:
            winners.append((gain, rule))
    return (max(winners)[1] if winners else "max"), reasons


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def render(rows: Sequence[Row], facts: dict, command: str, machine: dict, seconds: float) -> str:
    default, reasons = decide_default(rows)
    out = ["# Per-channel weights and range rules (beyond the thesis)", "",
           f"Made by `{command}` in {seconds / 60:.1f} min; machine: {machine.get('cpu_model')} "
           f"({machine.get('cpus_available')} CPUs usable, shared: wall times are noisy), Python "
           f"{machine.get('python')}, onnxruntime {machine.get('onnxruntime')}, onnx {machine.get('onnx')}, "
           f"numpy {machine.get('numpy')}.", "",
           "Every part of the network (layer inputs, conv and fc weights, layer outputs; biases in float) "
           "in dynamic fixed point of one width, scored once (no search, no fine-tuning). *Per tensor*: "
           "one fractional length per layer's weights (the thesis). *Per channel*: one per output channel. "
           "Range rules: `max` (eq. 5.2, layer outputs one integer bit fewer), `percentile:99.99`, `mse` "
           "(least expected squared error on the calibration histogram); per channel, the rule picks each "
           "channel's fractional length from that channel's weights. Layer outputs that fill one Concat "
           "share the format of the widest of them; outputs read by a ReLU6 Clip are measured after it.", ""]
    for name, f in facts.items():
        net_rows = [r for r in rows if r.network == name]
        grans = sorted({r.granularity for r in net_rows}, key=GRANULARITIES.index)
        widths = sorted({r.bits for r in net_rows}, reverse=True)
        calib = ("the same images (the zoo has no other ImageNet data: calibration set = test set)"
                 if f["calib_is_test"] else f"{f['n_calib']} seeded calibration-split images")
        out += [f"## {name}", "",
                f"FP32 top-1 {pct(f['fp32'])} % on {f['n_test']} test images; ranges from {calib}. "
                f"{len(f['ties'])} Concat ties, {f['bounded_outputs']} Clip-bounded outputs.", ""]
        headers = ["bits", "weights"] + [f"`{r}` top-1 % (change, points)" for r in RULES]
        table = []
        for bits in widths:
            for g in grans:
                cells = []
                for rule in RULES:
                    r = next(x for x in net_rows if x.bits == bits and x.granularity == g and x.rule == rule)
                    cells.append(f"{pct(r.top1)} ({100 * -r.drop:+.2f})")
                table.append([bits, f"per {g}", *cells])
        out += [md_table(headers, table), ""]
        for bits in widths:
            best = max((x for x in net_rows if x.bits == bits), key=lambda x: x.top1)
            out.append(f"- best at {bits} bits: weights per {best.granularity}, `{best.rule}`: "
                       f"{pct(best.top1)} % ({100 * -best.drop:+.2f} points vs FP32)")
        out.append("")
    out += ["## onnxruntime's int8 quantizer (figures from the issue, not re-measured here)", "",
            md_table(["network", "setting", "top-1 change (points)"], ORT_FIGURES), "",
            "onnxruntime scales by arbitrary floats (with zero points for activations); dynamic fixed "
            "point only by powers of two, i.e. shifts.", "",
            "## Default range rule of `compress`", "", f"Decision: **`{default}`** (rule: a rule replaces "
            f"`max` only if it is never more than {100 * SLACK:.1f} point below it on any network and width, "
            "per tensor, and better in sum).", ""]
    out += [f"- {r}" for r in reasons]
    out += ["", "## Not yet carried by the exporters", "",
            "There is no QDQ export, hardware report, integer model or C code generator yet. When they are "
            "written, per-channel weights must be carried as one shift per output channel (the `@axis` of "
            "the format string: QDQ `axis` with power-of-two scales, one right-shift per output channel in "
            "the integer accumulator's requantization), and Concat-tied outputs as one shared buffer format."]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data prefixes (a few minutes)")
    parser.add_argument("--out", default=str(REPO / "docs" / "PER_CHANNEL.md"))
    parser.add_argument("--json", default=str(REPO / "bench" / "out" / "per_channel.json"))
    parser.add_argument("--networks", default="", help="comma-separated zoo names (default: all)")
    parser.add_argument("--from-json", default="", help="re-render OUT from a previous run's JSON (no measuring)")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows = [Row(**r) for r in saved["rows"]]
        Path(args.out).write_text(render(rows, saved["facts"], saved["command"], saved["machine"], saved["seconds"]))
        print(f"wrote {args.out} from {args.from_json}")
        return 0
    wanted = [n for n in args.networks.split(",") if n]
    nets = [n for n in NETWORKS if not wanted or n.name in wanted]
    command = "RISTRETTO_ZOO=/work/shared/zoo python bench/per_channel.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    machine = machine_info()
    t0 = time.perf_counter()
    rows: list[Row] = []
    facts: dict = {}
    for net in nets:
        r, f = measure(net, args.quick, log=lambda msg: print(msg, flush=True))
        rows += r
        facts[net.name] = f
    seconds = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render(rows, facts, command, machine, seconds))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": command, "machine": machine, "seconds": seconds,
                                           "facts": facts, "rows": [asdict(r) for r in rows],
                                           "default_rule": decide_default(rows)[0]}, indent=1))
    print(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
