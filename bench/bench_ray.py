"""Scale-out benchmark (issue 16): compress with the local backend and on a local Ray cluster.

    RISTRETTO_ZOO=../shared/zoo python bench/bench_ray.py [--model lenet-mnist] [--workers 1,2]
        [--images 2000] [--scheme dfp] [--granularity group]

Runs ``compress --tolerance 0.01`` once locally and once per worker count on a local Ray cluster
(``ray.init(num_cpus=max(workers))``), on the first ``--images`` images of the model's test set
(all by default), checks that every run finds the same plan and report, and prints the speed-ups
measured in this one run, the load average, whether the actors read their shards themselves,
how many independent plans (and plans of different categories: the interleaved per-category
searches) were in flight together at most, and the per-image cost that the ImageNet estimate in
the README is computed from:

    time(W workers) ~= startup + evaluations * images * cost_per_image / W + evaluations * overhead

With ``--cost MODEL``, only the per-image cost of evaluating MODEL's FP32 model and its 8-bit
dfp simulated model on ``--images`` images of its test set (one process, threads of this
machine), the inputs of the ImageNet estimate.

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


def per_image_cost(model: str, images: int) -> dict:
    """Seconds per image of ``model``'s FP32 and 8-bit dfp simulated models (inference only)."""
    from ristretto_onnx import zoo
    from ristretto_onnx.options import QuantizeOptions
    from ristretto_onnx.quantize import quantize
    from ristretto_onnx.runtime.evaluate import evaluate

    data = zoo.model_dataset(model, "test").take(images)
    sim = quantize(f"zoo:{model}", QuantizeOptions(scheme="dfp", bits=8, bias_correction="off")).model
    fp32 = evaluate(str(zoo.resolve_model(f"zoo:{model}")), data, batch_size=32, progress=False)
    q = evaluate(sim, data, batch_size=32, progress=False)
    return {"model": model, "images": len(data), "load": os.getloadavg(),
            "fp32_seconds_per_image": round(1 / fp32.images_per_s, 5),
            "simulated_seconds_per_image": round(1 / q.images_per_s, 5)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet-mnist")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--images", type=int, default=0, help="first N test images (0: all)")
    ap.add_argument("--scheme", default="dfp")
    ap.add_argument("--granularity", default="group")
    ap.add_argument("--cost", metavar="MODEL", help="only the per-image costs of MODEL")
    args = ap.parse_args(argv)
    if args.cost:
        out = per_image_cost(args.cost, args.images or 64)
        print(json.dumps(out, indent=1))
        return out
    import ray

    from ristretto_onnx import zoo
    from ristretto_onnx.runtime import cluster

    counts = [int(w) for w in args.workers.split(",")]
    spec = f"zoo:{args.model}"
    data = zoo.model_dataset(args.model, "test")
    data = data.take(args.images) if args.images else data
    kw = dict(scheme=args.scheme, tolerance=0.01, granularity=args.granularity)
    t = time.perf_counter()
    local = compress(spec, data, **kw)
    r = local.report
    out = {"model": args.model, "images": r.n_images, "scheme": args.scheme, "granularity": args.granularity,
           "cpus": len(os.sched_getaffinity(0)), "load_before": os.getloadavg(),
           "local_seconds": round(time.perf_counter() - t, 1), "local_search_seconds": round(r.seconds["search"], 1),
           "evaluations": r.evaluations, "plans_scored": r.plans_scored, "sessions_built": r.sessions_built,
           "search_seconds_per_image": r.seconds["search"] / max(1.0, r.evaluations * r.n_images),
           "ray": {}}
    seen = {"read_by_actors": [], "in_flight": [1], "categories": [1]}
    init, ahead = cluster.RayRunner.__init__, cluster.RayRunner.ahead

    def spy_init(self, *a, **k):
        init(self, *a, **k)
        seen["read_by_actors"].append(self.read_by_actors)

    def spy_ahead(self, plans, depth):
        ahead(self, plans, depth)
        queued = {key for key, _ in self._pending if key is not None}
        seen["in_flight"].append(len(queued))
        # plans quantizing groups no other queued plan quantizes: the per-category searches' probes
        groups = [frozenset(g for g, _ in key) for key in queued]
        seen["categories"].append(sum(all(a.isdisjoint(b) for j, b in enumerate(groups) if j != i)
                                      for i, a in enumerate(groups)))

    cluster.RayRunner.__init__, cluster.RayRunner.ahead = spy_init, spy_ahead
    t = time.perf_counter()
    ray.init(num_cpus=max(counts), log_to_driver=False, include_dashboard=False)
    out["ray_startup_seconds"] = round(time.perf_counter() - t, 1)
    try:
        for w in counts:
            t = time.perf_counter()
            remote = compress(spec, data, backend=Backend("ray", workers=w), **kw)
            dt = time.perf_counter() - t
            out["ray"][w] = {"seconds": round(dt, 1), "search_seconds": round(remote.report.seconds["search"], 1),
                             "speedup_vs_local": round(out["local_seconds"] / dt, 2),
                             "same_report": _report(remote) == _report(local),
                             "same_model": remote.model.SerializeToString() == local.model.SerializeToString()}
    finally:
        ray.shutdown()
        cluster.RayRunner.__init__, cluster.RayRunner.ahead = init, ahead
    out["actors_read_their_shards"] = all(seen["read_by_actors"])
    out["most_plans_in_flight"] = max(seen["in_flight"])
    out["most_categories_in_flight"] = max(seen["categories"])
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
