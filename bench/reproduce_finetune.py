"""The thesis's fine-tuned columns (tables 5.2, 6.1, 7.1) for bench/reproduce.py (thesis 9.3).

The thesis reports its condensed networks as "after (before)" fine-tuning. For every zoo network
with a training set, this fine-tunes the configuration each table measured, with
:func:`ristretto_onnx.finetune.finetune` (shadow weights, stochastic rounding, the best epoch by
the exact simulated model), and scores it on the same evaluation set as the table:

* table 5.2: dynamic fixed point at the thesis's (layer outputs, conv, fc) bits, starting from the
  better of the two range rules the table shows (eq. 5.2 or MSE);
* table 6.1: 8-bit minifloat with the split table 6.1 chose, on the minifloat set;
* table 7.1: power-of-two weights in the thesis's window, layer outputs float.

The recipe (epochs, training images, learning rate, batch) is recorded with every row and printed
in the table. SqueezeNet is not fine-tuned: the zoo has no ImageNet training images (its
calibration split is the test sample itself), and training on test images would be no result.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

from bench import thesis_reference as thesis
from bench.common import Bench, md_table, pct, test_subset, uniform_plan
from ristretto_onnx.formats import Minifloat
from ristretto_onnx.schemes import make_scheme, plan_for

Log = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    """How one network is fine-tuned in the reproduction (``train_size=None``: the whole file)."""

    epochs: int
    lr: float
    batch_size: int
    train_size: int | None
    seed: int = 0

    def describe(self, n_train: int) -> str:
        return (f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} x {n_train:,} images, "
                f"Adam {self.lr:g}, batch {self.batch_size}")


#: The full run's recipes: LeNet as in the fine-tuning tests (lr 1e-3), two epochs on 10,000
#: MNIST training images; ResNet-20 one epoch on the zoo's whole 10,000-image CIFAR-10 file.
RECIPES = {
    "lenet-mnist": Recipe(epochs=2, lr=1e-3, batch_size=64, train_size=10000),
    "resnet20-cifar10": Recipe(epochs=1, lr=1e-4, batch_size=128, train_size=None),
}
#: ``--quick``: one epoch on 1,000 images.
QUICK = {name: replace(r, epochs=1, train_size=1000) for name, r in RECIPES.items()}
NOT_FEASIBLE = {
    "squeezenet1.1-imagenet": "no ImageNet training images in the zoo (the calibration split is the "
                              "1,000-image test sample itself)",
}


def recipe_for(name: str, *, quick: bool, epochs: int | None = None, train_size: int | None = None) -> Recipe | None:
    """The recipe for zoo network ``name`` (command-line overrides applied), ``None`` if it has none."""
    base = (QUICK if quick else RECIPES).get(name)
    if base is None:
        return None
    if epochs is not None:
        base = replace(base, epochs=epochs)
    if train_size is not None:
        base = replace(base, train_size=train_size or None)
    return base


def configurations(bench: Bench, res: dict) -> list[dict]:
    """The plans the tables measured, with the evaluation set each is scored on."""
    out = []
    for row in res.get("t52", []):
        a, c, f = row["bits"]
        widths = {"activations": a, "conv_weights": c, "fc_weights": f}
        accs = {"max": row["accuracy"], "mse": row.get("accuracy_mse", -1.0)}
        rule = "max" if accs["max"] >= accs["mse"] else "mse"  # ties: the thesis's rule
        out.append({"table": "5.2", "thesis": row["thesis"], "config": f"dfp {a}/{c}/{f}",
                    "start": "eq. 5.2 ranges" if rule == "max" else "MSE ranges", "on": "table",
                    "plan": plan_for(make_scheme("dfp", range_rule=rule), bench.ranges, widths)})
    if "t61" in res:
        t = res["t61"]
        out.append({"table": "6.1", "thesis": res["spec"]["thesis"],
                    "config": f"minifloat 8 ({t['exp_bits']}e/{t['mant_bits']}m)", "start": "table 6.1's split",
                    "on": "minifloat", "plan": uniform_plan(bench.ranges, Minifloat(8, t["exp_bits"]))})
    if "t71" in res:
        lo, hi = thesis.POW2_WINDOW
        scheme = make_scheme("pow2", exp_min=lo, exp_max=hi)
        out.append({"table": "7.1", "thesis": res["spec"]["thesis"], "config": f"pow2 weights {lo}..{hi}",
                    "start": "layer outputs float", "on": "table",
                    "plan": plan_for(scheme, bench.ranges, {"conv_weights": 4, "fc_weights": 4})})
    return out


def measure(bench: Bench, res: dict, recipe: Recipe | None, log: Log) -> dict:
    """Fine-tune every configuration of ``res`` (the tables measured so far) with ``recipe``."""
    name = bench.spec.name
    if recipe is None:
        return {"skipped": NOT_FEASIBLE.get(name, "no fine-tuning recipe for this network")}
    try:
        from ristretto_onnx.finetune.trainer import FinetuneOptions, finetune
    except ImportError as e:  # torch is an optional extra
        return {"skipped": f"fine-tuning needs torch ({e})"}
    from ristretto_onnx import zoo
    from ristretto_onnx.passes.pipeline import simulate

    train = zoo.model_dataset(name, "train")
    opts = FinetuneOptions(epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size, seed=recipe.seed,
                           train_size=recipe.train_size, device="cpu", score_batch_size=bench.spec.batch_size)
    rows = []
    for cfg in configurations(bench, res):
        on = cfg.pop("on")
        plan = cfg.pop("plan")
        t = time.perf_counter()
        r = finetune(simulate(bench.table.prepared, plan), train, test_subset(bench.test, bench.n(on)),
                     options=opts, baseline=bench.baseline(on))
        rows.append({**cfg, "n": r.n_score, "fp32": r.fp32, "before": r.before, "after": r.after,
                     "before_table": bench.accuracy(plan, on), "best_epoch": r.best_epoch,
                     "scores": [e.score for e in r.epochs], "n_train": r.n_train,
                     "train_seconds": round(sum(e.train_seconds for e in r.epochs), 1),
                     "seconds": round(time.perf_counter() - t, 1)})
        log(f"    fine-tuned table {cfg['table']} {cfg['config']}: {pct(r.after)} % ({pct(r.before)} %), "
            f"{rows[-1]['seconds']:.0f} s")
    return {"recipe": asdict(recipe), "rows": rows}


# ---------------------------------------------------------------------------------------------
# RESULTS.md


TEXT = """\
The thesis reports its condensed networks as *after (before)* fine-tuning (9.3: full-precision
shadow weights, stochastic rounding in the forward pass, the best epoch kept). Here every
configuration of tables 5.2, 6.1 and 7.1 is fine-tuned with `ristretto_onnx.finetune` on the
network's training file (seeded subset where the recipe says so; CPU, seed 0) and scored with the
exact simulated model on the same evaluation set as the table; epoch 0 (the model as given) can
win, so "after" is never below "before". Our fine-tuning budget is a few epochs on a 2-core CPU,
the thesis's many on a GPU. `bench/reproduce.py --no-finetune` skips this section."""


def _thesis_row(table: str, network: str) -> dict | None:
    if table == "5.2":
        return next((r for r in thesis.TABLE_5_2 if r["network"] == network), None)
    return {"6.1": thesis.TABLE_6_1, "7.1": thesis.TABLE_7_1}[table].get(network)


def _after_before(after: float, before: float) -> str:
    return f"{pct(after)} ({pct(before)})"


def section(results: dict) -> str:
    rows = []
    for name, r in results["networks"].items():
        ft = r.get("finetune")
        if ft is None:
            continue
        if "skipped" in ft:
            rows.append(["5.2, 6.1, 7.1", r["spec"]["label"], "—", "—", "—", f"not fine-tuned: {ft['skipped']}",
                         "—", "—", "—"])
            continue
        recipe = Recipe(**ft["recipe"])
        for row in ft["rows"]:
            ref = _thesis_row(row["table"], row["thesis"])
            rows.append([row["table"], r["spec"]["label"], f"{row['config']}, from {row['start']}",
                         f"{pct(row['fp32'])} ({row['n']:,} images)", _after_before(row["after"], row["before"]),
                         f"{recipe.describe(row['n_train'])}; best epoch {row['best_epoch']}",
                         row["thesis"], "—" if ref is None else pct(ref["fp32"]),
                         "—" if ref is None else _after_before(ref["finetuned"], ref["before"])])
    if not rows:
        return "Not measured in this run (`--no-finetune`)."
    return md_table(["table", "network (ours)", "configuration", "ours FP32", "ours top-1 after (before) FT",
                     "fine-tuning", "thesis network", "thesis FP32", "thesis after (before) FT"], rows)
