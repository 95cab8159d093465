"""Kernel benchmark (issue 14): simulated / FP32 throughput with and without the kernel library.

    python bench/bench_kernels.py                 # ResNet-20 batch 256 and SqueezeNet 1.1
    python bench/bench_kernels.py --quick         # ResNet-20 only, fewer rounds
    python bench/bench_kernels.py --models resnet20-cifar10 --rounds 3 --batches 2 --search

For every zoo model and scheme (8 bits in every category the scheme quantizes, the plan
``quantize`` makes: ``fixed`` one shared split; ``dfp`` per-group fractional lengths with
``ufixed`` for activations that cannot be negative, as ``compress`` and ``quantize`` write it
(``dfp-signed``: signed activations only); ``minifloat`` one format per category; ``pow2``
weights ``pow2:-8:-1`` with float activations, as in the thesis) it measures, in one run, the
throughput ratio simulated / FP32 of:

* ``written``: the model as ``compress``/``quantize`` write it (function bodies), in a session
  without the library (stock onnxruntime; the project's thread options, as for FP32);
* ``written+layout``: the same in a project session without the library (``eval`` and
  ``compress`` run the NCHWc layout pass, :mod:`ristretto_onnx.runtime.layout`);
* ``written+lib``: the same file in a project session with the library registered
  (:mod:`ristretto_onnx.runtime.kernels` routes each quantizer, fuses quantizer/ReLU/Add runs);
* ``sim`` and ``sim+lib``: the Simulator (lowered graph, NCHWc layout pass), without and with it;
* the same on the CUDA EP when onnxruntime-gpu sees a GPU (``gpu:`` rows).

Every option runs once per round on the same batches; rounds are interleaved (the machine may
be shared) and the median round counts (`--best`: the fastest round, least disturbed by other
jobs), by wall time and by process CPU time. The load average
is printed with the results, which also go to ``bench/out/kernels.json``. ``--search`` also runs
``compress`` (dfp, tolerance 0.01) on each model and prints its full-set evaluation equivalents,
sessions and wall time. RISTRETTO_ZOO must point at the zoo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ristretto_onnx import zoo
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.ranges import measure_groups
from ristretto_onnx.runtime.kernels import ENV, library_path, library_providers
from ristretto_onnx.runtime.session import available_cpus, create_session, gpu_available
from ristretto_onnx.runtime.simulator import Simulator
from ristretto_onnx.schemes import make_scheme, plan_for

OUT = Path(__file__).resolve().parent / "out" / "kernels.json"
MODELS = {"resnet20-cifar10": 256, "squeezenet1.1-imagenet": 64}
SCHEMES = ("fixed", "dfp", "minifloat", "pow2")
EXTRA_SCHEMES = ("dfp-signed",)


@contextmanager
def library(on: bool):
    """Project sessions built inside see the library (on) or not (off)."""
    old = os.environ.get(ENV)
    if not on:
        os.environ[ENV] = "off"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def plans(prepared, calib, bits: int = 8) -> dict[str, dict]:
    """The plan of every scheme at ``bits`` for the categories it quantizes, as ``quantize`` makes it."""
    signed = measure_groups(prepared.float_model, prepared.layers, calib)
    unsigned = measure_groups(prepared.float_model, prepared.layers, calib, unsigned=True)

    def plan(scheme, ranges):
        return plan_for(scheme, ranges, {c: bits for c in scheme.categories})
    out = {name: plan(make_scheme(name), signed) for name in ("fixed", "minifloat")}
    out["dfp"] = plan(make_scheme("dfp"), unsigned)  # ufixed where non-negative (compress's default)
    out["dfp-signed"] = plan(make_scheme("dfp"), signed)
    out["pow2"] = plan(make_scheme("pow2", exp_min=-8, exp_max=-1), signed)  # weights only
    return out


def _runner(session, name: str, params: dict | None = None):
    params = {k: v for k, v in (params or {}).items() if k != name}
    return lambda x: session.run(None, {name: x, **params})


def measure(runners: dict, batches: list[np.ndarray], rounds: int, best: bool = False) -> tuple[dict, dict, dict]:
    """Median (``best``: highest) images/s of every runner over interleaved rounds, by wall time
    and by CPU time.

    Worker threads do not spin, so process CPU time measures the work done; on a shared machine
    it is the steadier of the two, and the best round is the one least disturbed by other jobs.
    The third result holds every round's images/s.
    """
    wall = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    for fn in runners.values():  # warm-up
        fn(batches[0])
    n = sum(len(x) for x in batches)
    for _ in range(rounds):
        for key, fn in runners.items():
            t, c = time.perf_counter(), time.process_time()
            for x in batches:
                fn(x)
            wall[key].append(n / (time.perf_counter() - t))
            cpu[key].append(n / max(time.process_time() - c, 1e-9))
    stat = np.max if best else np.median
    return ({k: float(stat(v)) for k, v in wall.items()}, {k: float(stat(v)) for k, v in cpu.items()},
            {"wall": wall, "cpu": cpu})


def search_cost(name: str) -> dict:
    """``compress`` (dfp, tolerance 0.01) on the zoo model: evaluations, sessions, wall time."""
    from ristretto_onnx.compress import compress

    t = time.perf_counter()
    rep = compress(f"zoo:{name}", scheme="dfp", tolerance=0.01).report
    return {"evaluations": rep.evaluations, "sessions": rep.sessions_built, "plans scored": rep.plans_scored,
            "seconds": time.perf_counter() - t, "search seconds": rep.seconds.get("search"),
            "baseline": rep.baseline, "final": rep.final,
            "bits": {c: v["bits"] for c, v in rep.categories.items()}}


def bench_model(name: str, batch: int, n_batches: int, rounds: int, schemes, providers, best: bool = False) -> dict:
    model_path = zoo.resolve_model(f"zoo:{name}")
    data = zoo.model_dataset(name, "test").take(batch * n_batches)
    batches = [np.ascontiguousarray(x) for x, _ in data.batches(batch)][:n_batches]
    prepared = prepare(str(model_path))
    all_plans = plans(prepared, zoo.model_dataset(name, "calib").take(256))
    inp = next(i.name for i in prepared.float_model.graph.input
               if i.name not in {t.name for t in prepared.float_model.graph.initializer})
    runners = {"fp32": _runner(create_session(prepared.float_model, providers=providers, kernels=False), inp)}
    for scheme in schemes:
        written = simulate(prepared, all_plans[scheme])
        runners[f"{scheme}/written"] = _runner(create_session(written, providers=providers, kernels=False), inp)
        runners[f"{scheme}/written+layout"] = _runner(
            create_session(written, providers=providers, kernels=False, blocked_layout=True), inp)
        runners[f"{scheme}/written+lib"] = _runner(create_session(written, providers=providers), inp)
        for lib in (False, True):
            with library(lib):
                sim = Simulator(prepared.annotated, providers=providers)
                sim.set_formats(all_plans[scheme], replace=True)
                sess = sim.session()
            runners[f"{scheme}/sim{'+lib' if lib else ''}"] = _runner(sess, inp, sim.feeds(batches[0]))
    wall, cpu, every = measure(runners, batches, rounds, best)
    other = np.median if best else np.max  # the other statistic, for the record
    ratios = {f"{m} {'median' if best else 'best'}": {k: float(other(v)) / float(other(every[m]["fp32"]))
                                                      for k, v in every[m].items()} for m in ("wall", "cpu")}
    return {"statistic": "best" if best else "median", "wall": {k: v / wall["fp32"] for k, v in wall.items()},
            "cpu": {k: v / cpu["fp32"] for k, v in cpu.items()},
            "fp32 images/s": wall["fp32"], "fp32 images/cpu-s": cpu["fp32"], "batch": batch,
            "batches": n_batches, "rounds": rounds, **ratios}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ResNet-20 only, 2 rounds")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--schemes", default=",".join(SCHEMES + EXTRA_SCHEMES))
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--batches", type=int, default=2, help="batches per round")
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA EP rows (bench/device_kernels.py)")
    ap.add_argument("--search", action="store_true", help="also run compress (dfp, tol 0.01) per model")
    ap.add_argument("--best", action="store_true", help="best round instead of the median (a busy shared machine)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    models = ["resnet20-cifar10"] if args.quick else args.models.split(",")
    rounds = args.rounds or (2 if args.quick else 3)
    schemes = args.schemes.split(",")
    lib = library_path()
    if lib is None:
        print("kernel library not built (ristretto-onnx kernels --build): the +lib columns equal the stock ones")
    devices = {} if args.gpu_only else {"cpu": ["CPUExecutionProvider"]}
    if gpu_available():
        devices["gpu"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    results = {"library": str(lib) if lib else None,
               "library kernels": list(library_providers(str(lib))) if lib else [],
               "cpus": available_cpus(), "load average before": os.getloadavg(), "models": {}, "search": {}}
    for name in models:
        for dev, providers in devices.items():
            batch = MODELS.get(name, 64)
            results["models"][f"{dev}:{name}"] = bench_model(
                name, batch, args.batches, rounds, schemes, providers, args.best)
    results["load average after"] = os.getloadavg()
    if args.search:
        for name in models:
            results["search"][name] = search_cost(name)
    print(f"library: {results['library']} ({','.join(results['library kernels']) or '-'}), "
          f"{results['cpus']} CPUs, load average {results['load average before'][0]:.1f} -> "
          f"{results['load average after'][0]:.1f}")
    cols = ["written", "written+layout", "written+lib", "sim", "sim+lib"]
    for key, r in results["models"].items():
        print(f"\n{key} (batch {r['batch']}, {r['batches']} batches x {r['rounds']} interleaved rounds, "
              f"{r['statistic']}s), "
              f"FP32 {r['fp32 images/s']:.0f} images/s, {r['fp32 images/cpu-s']:.0f} images/CPU-s; "
              f"simulated / FP32 by wall time | by CPU time:")
        print(f"  {'scheme':<11}" + "".join(f"{c:>15}" for c in cols) + "  |" + "".join(f"{c:>15}" for c in cols))
        for s in schemes:
            print(f"  {s:<11}" + "".join(f"{r['wall'][f'{s}/{c}']:>15.2f}" for c in cols) + "  |"
                  + "".join(f"{r['cpu'][f'{s}/{c}']:>15.2f}" for c in cols))
        other = "median" if r["statistic"] == "best" else "best"
        print(f"  the same with the {other} round:")
        for s in schemes:
            print(f"  {s:<11}" + "".join(f"{r[f'wall {other}'][f'{s}/{c}']:>15.2f}" for c in cols) + "  |"
                  + "".join(f"{r[f'cpu {other}'][f'{s}/{c}']:>15.2f}" for c in cols))
    for name, c in results["search"].items():
        print(f"\nsearch {name} (compress dfp, tol 0.01): {c['evaluations']:.1f} full-set evaluations, "
              f"{c['plans scored']} plans, {c['sessions']} sessions, {c['seconds']:.1f} s wall "
              f"(search {c['search seconds'] or 0:.1f} s), {c['baseline']:.4f} -> {c['final']:.4f}, bits {c['bits']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
