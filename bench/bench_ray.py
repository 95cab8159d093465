"""Scale-out benchmark (issue 16): compress with the local backend and on a local Ray cluster.

    RISTRETTO_ZOO=../shared/zoo python bench/bench_ray.py [--model lenet-mnist] [--workers 1,2]

Runs ``compress --scheme dfp --tolerance 0.01`` once locally and once per worker count on a local
Ray cluster (``ray.init(num_cpus=max(workers))``), checks that every run finds the same plan and
report, and prints the speed-ups measured in this one run, plus the per-image cost that the
ImageNet estimate in the README is computed from:

    time(W workers) ~= startup + evaluations * images * cost_per_image / W + evaluations * overhead

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from ristretto_onnx.compress import compress
from ristretto_onnx.options import Backend


def _report(result) -> dict:
    d = result.report.to_dict()
    d.pop("seconds")
    return d


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet-mnist")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args(argv)
    import ray

    counts = [int(w) for w in args.workers.split(",")]
    spec = f"zoo:{args.model}"
    t = time.perf_counter()
    local = compress(spec, scheme="dfp", tolerance=0.01)
    out = {"model": args.model, "cpus": len(os.sched_getaffinity(0)), "load": os.getloadavg()[0],
           "local_seconds": round(time.perf_counter() - t, 1),
           "evaluations": local.report.evaluations, "images": local.report.n_images,
           "search_seconds_per_image": local.report.seconds["search"] / max(1.0, local.report.evaluations * local.report.n_images),
           "ray": {}}
    t = time.perf_counter()
    ray.init(num_cpus=max(counts), log_to_driver=False, include_dashboard=False)
    out["ray_startup_seconds"] = round(time.perf_counter() - t, 1)
    for w in counts:
        t = time.perf_counter()
        remote = compress(spec, scheme="dfp", tolerance=0.01, backend=Backend("ray", workers=w))
        dt = time.perf_counter() - t
        out["ray"][w] = {"seconds": round(dt, 1), "speedup_vs_local": round(out["local_seconds"] / dt, 2),
                         "same_report": _report(remote) == _report(local)}
    ray.shutdown()
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
