"""Runtime benchmark: how much does simulation cost on top of plain FP32 inference?

    python bench/bench_runtime.py            # resnet20-cifar10, all 10,000 CIFAR-10 test images
    python bench/bench_runtime.py --quick    # 2,560 images, 2 rounds

Measured in one run, batch 256 (RISTRETTO_ZOO must point at the shared zoo):

* FP32 images/s and simulated images/s (dynamic fixed point, 8 bits, on every Conv/Gemm input,
  weight and output, set up with the passes) and their ratio, for every design option:
  the plain function-body session, weights fed as graph inputs (no NCHWc), the Simulator
  parametric and constant, with and without the NCHWc layout pass; and, measured apart (a
  spinning session slows the next one), FP32 vs Simulator with spinning worker threads;
* session-creation times, the cost of a format change, peak memory (RSS and Python heap during
  a streamed evaluation of 2,500 vs 10,000 images);
* the registered-kernel alternative (onnxruntime-extensions PyOp), when that package is present;
* the core benchmark: a small conv network with QuantizeSim on every conv input and weight vs
  without, and proof that the weight quantizers fold away at session creation.

The machine may be shared: every option runs once per round, rounds are interleaved, and both
the best and the median round are reported, with process CPU time per image (spinning off, CPU
time measures work rather than waiting). Results go to ``bench/out/runtime.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ristretto_onnx import zoo
from ristretto_onnx.range_rules import dfp_format
from ristretto_onnx.ops import attach_functions, make_quantize_node
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.ranges import group_ranges
from ristretto_onnx.runtime.evaluate import evaluate
from ristretto_onnx.runtime.session import available_cpus, create_session, optimized_model
from ristretto_onnx.runtime.simulator import Simulator

OUT = Path(__file__).resolve().parent / "out" / "runtime.json"
MODEL = "resnet20-cifar10"


def _timed(fn):
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def _weights_as_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Option (a)'s cost: every Conv/Gemm weight becomes a graph input fed at each run."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {n.input[1] for n in out.graph.node if n.op_type in ("Conv", "Gemm")}
    feeds, keep = {}, []
    for init in out.graph.initializer:
        if init.name in weights:
            arr = numpy_helper.to_array(init)
            feeds[init.name] = arr
            out.graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, arr.shape))
        else:
            keep.append(init)
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out, feeds


def _interleaved(runners: dict, batches: list[np.ndarray], rounds: int) -> dict[str, dict]:
    """Round-robin at batch granularity: every option runs each batch in turn, so a burst of
    load from other processes hits all options alike; per round, each option's time is summed."""
    n = sum(len(x) for x in batches)
    wall = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    for _ in range(rounds):
        w = dict.fromkeys(runners, 0.0)
        c = dict.fromkeys(runners, 0.0)
        for x in batches:
            for name, run in runners.items():
                c0, t0 = time.process_time(), time.perf_counter()
                run(x)
                w[name] += time.perf_counter() - t0
                c[name] += time.process_time() - c0
        for name in runners:
            wall[name].append(n / w[name])
            cpu[name].append(c[name] / n * 1e6)
    return {k: {"images_per_s_best": round(max(wall[k]), 1),
                "images_per_s_median": round(float(np.median(wall[k])), 1),
                "cpu_us_per_image_best": round(min(cpu[k]), 1)} for k in runners}


def _peak_python_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _small_conv_net(channels: int = 32, layers: int = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, prev, cin = [], [], "input", 16
    for i in range(layers):
        w = f"w{i}"
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (channels, cin, 3, 3)).astype(np.float32), w))
        nodes += [helper.make_node("Conv", [prev, w], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev, cin = f"r{i}", channels
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["N", 16, 32, 32])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _quantize_conv_inputs_and_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type == "Conv":
            qi = make_quantize_node(node.input[0], f"{node.name}_xq", "fixed:8:4", name=f"{node.name}/inputs")
            qw = make_quantize_node(node.input[1], f"{node.name}_wq", "fixed:8:7", name=f"{node.name}/weights")
            node.input[0], node.input[1] = qi.output[0], qw.output[0]
            nodes += [qi, qw]
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return attach_functions(out)


def core_benchmark(rounds: int) -> dict:
    """A small conv net with QuantizeSim on every conv input and weight vs without."""
    fp32 = _small_conv_net()
    sim = _quantize_conv_inputs_and_weights(fp32)
    x = np.random.default_rng(1).normal(0, 1, (256, 16, 32, 32)).astype(np.float32)
    batches = [x] * 8
    fp = create_session(fp32, spinning=False)
    plain = create_session(sim, spinning=False)
    simulator = Simulator(sim, spinning=False)
    res = _interleaved({"fp32": lambda b: fp.run(None, {"input": b}),
                        "quantized (function bodies)": lambda b: plain.run(None, {"input": b}),
                        "quantized (Simulator)": simulator.run}, batches, rounds)
    optimized = optimized_model(sim)
    weights = {i.name for i in sim.graph.initializer}
    reading_weights = [n.op_type for n in optimized.graph.node if set(n.input) & weights]
    counts = Counter(n.op_type for n in optimized.graph.node)
    base = res["fp32"]["images_per_s_best"]
    for v in res.values():
        v["ratio_to_fp32"] = round(v["images_per_s_best"] / base, 3)
    return {
        "network": "4 x (Conv 3x3 32ch + ReLU), input (256,16,32,32); QuantizeSim fixed:8:4 on every conv "
                   "input, fixed:8:7 on every weight",
        "throughput": res,
        "optimized_graph_ops": dict(counts),
        "quantizesim_nodes_left": sum(1 for n in optimized.graph.node if n.domain == "ai.ristretto"),
        "round_nodes": counts.get("Round", 0),
        "activation_quantizers": 4,
        "ops_reading_a_weight_initializer": sorted(set(reading_weights)),
        "weight_quantizers_folded": counts.get("Round", 0) == 4 and not
        (set(reading_weights) & {"Round", "Mul", "Clip"}),
    }


def kernel_benchmark() -> dict:
    """The registered-kernel alternative: a Python custom op through onnxruntime-extensions."""
    shape = (256, 16, 32, 32)
    x = np.random.default_rng(2).normal(0, 4, shape).astype(np.float32)

    def one_op_model(node, domains):
        graph = helper.make_graph([node], "k", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains])
        m.ir_version = 10
        return m

    def best_ms(session, reps=20):
        for _ in range(3):
            session.run(None, {"x": x})
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            session.run(None, {"x": x})
            t.append(time.perf_counter() - t0)
        return round(min(t) * 1e3, 2)

    body = attach_functions(one_op_model(make_quantize_node("x", "y", "fixed:8:4", name="q"), [("", 17)]))
    from ristretto_onnx.runtime.lowering import lower

    lowered = lower(body, parametric=False)
    out = {"tensor": list(shape),
           "function_body_ms": best_ms(create_session(body)),
           "lowered_ms (graph output: exact Round chain)": best_ms(create_session(lowered.model))}
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        out["pyop"] = "onnxruntime-extensions not installed (pip install onnxruntime-extensions)"
        return out

    @onnx_op(op_type="QuantizeSimPy", domain="ai.onnx.contrib", inputs=[PyCustomOpDef.dt_float],
             outputs=[PyCustomOpDef.dt_float],
             attrs={"frac_bits": PyCustomOpDef.dt_int64, "bits": PyCustomOpDef.dt_int64})
    def _quantize_sim_py(v, **attrs):
        f, b = attrs["frac_bits"], attrs["bits"]
        y = np.multiply(v, np.float32(2.0**f))
        np.clip(y, -(2.0 ** (b - 1)), 2.0 ** (b - 1) - 1, out=y)
        np.rint(y, out=y)
        y *= np.float32(2.0**-f)
        return y

    node = helper.make_node("QuantizeSimPy", ["x"], ["y"], domain="ai.onnx.contrib", frac_bits=4, bits=8)
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    session = ort.InferenceSession(one_op_model(node, [("", 17), ("ai.onnx.contrib", 1)]).SerializeToString(),
                                   so, providers=["CPUExecutionProvider"])
    from ristretto_onnx.formats import quantize

    exact = np.array_equal(session.run(None, {"x": x})[0].view(np.uint32), quantize(x, "fixed:8:4").view(np.uint32))
    out["pyop_ms"] = best_ms(session, reps=3)
    out["pyop_bit_exact"] = bool(exact)
    out["pyop_note"] = ("onnxruntime-extensions PyOp: the only custom-op route usable here (the onnxruntime "
                        "wheel ships no C headers); it calls back into Python per node")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,560 images and 2 rounds")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    n_images = 2560 if args.quick else 10000

    model_path = zoo.resolve_model(f"zoo:{MODEL}")
    test = zoo.model_dataset(MODEL, "test").take(n_images)
    batches = [np.ascontiguousarray(x) for x, _ in test.batches(256)]
    labels = test.labels

    prepared, t_prepare = _timed(lambda: prepare(str(model_path)))
    calib = zoo.model_dataset(MODEL, "calib").take(256)
    ranges = group_ranges(prepared.float_model, prepared.layers, calib)
    plan = {g.id: dfp_format(ranges[g.id].max_abs, 8, layer_output=g.role == "outputs")
            for g in prepared.layers.groups if g.role in ("inputs", "weights", "outputs")}
    simulated = simulate(prepared, plan)

    creation = {}
    fp32_session, creation["fp32 plain session"] = _timed(lambda: create_session(prepared.float_model, spinning=False))
    fp32_fast, creation["fp32 session + NCHWc layout pass"] = _timed(
        lambda: create_session(prepared.float_model, spinning=False, blocked_layout=True))
    plain_sim, creation["simulated plain session (function bodies)"] = _timed(
        lambda: create_session(simulated, spinning=False))
    winp, wfeeds = _weights_as_inputs(prepared.float_model)
    fp32_winp = create_session(winp, spinning=False)

    sims = {}
    for label, kwargs in [("Simulator parametric", {}), ("Simulator constant", {"parametric": False}),
                          ("Simulator parametric, no layout pass", {"blocked_layout": False})]:
        opts = {"spinning": False, **kwargs}
        sim = Simulator(prepared.annotated, **opts)
        sim.set_formats(plan, replace=True)
        _, creation[f"{label}: lower + build session"] = _timed(sim.session)
        sims[label] = sim
    fp32_spin = create_session(prepared.float_model, blocked_layout=True, spinning=True)
    sim_spin = Simulator(prepared.annotated, spinning=True)
    sim_spin.set_formats(plan, replace=True)

    # Cost of a format change (parametric): activations only -> no new session; a weight -> one.
    sim = sims["Simulator parametric"]
    act = next(g for g in plan if g.endswith("/inputs") and "layer2" in g)
    wgt = next(g for g in plan if g.endswith("/weights") and "layer2" in g)
    built = sim.sessions_built
    other = f"fixed:8:{plan[act].frac_bits - 2}"
    _, t_act = _timed(lambda: (sim.set_formats({act: other}), sim.session()))
    act_new_sessions = sim.sessions_built - built
    _, t_wgt = _timed(lambda: (sim.set_formats({wgt: "fixed:6:5"}), sim.session()))
    wgt_new_sessions = sim.sessions_built - built - act_new_sessions
    sim.set_formats(plan, replace=True)
    format_change = {"activation format change: seconds": round(t_act, 4), "new sessions": act_new_sessions,
                     "weight format change: seconds": round(t_wgt, 4), "new sessions (weight)": wgt_new_sessions}

    runners = {
        "fp32": lambda x: fp32_fast.run(None, {"input": x}),
        "fp32, plain session (same graph: noise check)": lambda x: fp32_session.run(None, {"input": x}),
        "fp32, weights as graph inputs (no NCHWc)": lambda x: fp32_winp.run(None, {"input": x, **wfeeds}),
        "simulated, plain session (function bodies)": lambda x: plain_sim.run(None, {"input": x}),
        **{label: s.run for label, s in sims.items()},
    }
    throughput = _interleaved(runners, batches, rounds)
    # Spinning worker threads keep a CPU busy after their run ends and slow down whichever
    # session runs next, so the spinning pair is measured apart from everything else.
    spinning = _interleaved({"fp32, spinning threads": lambda x: fp32_spin.run(None, {"input": x}),
                             "Simulator parametric, spinning threads": sim_spin.run}, batches, rounds)
    for group, base_name in ((throughput, "fp32"), (spinning, "fp32, spinning threads")):
        base = group[base_name]
        for v in group.values():
            v["ratio_to_fp32_best"] = round(v["images_per_s_best"] / base["images_per_s_best"], 3)
            v["ratio_to_fp32_cpu"] = round(base["cpu_us_per_image_best"] / v["cpu_us_per_image_best"], 3)
    throughput.update(spinning)

    # Accuracy check and bit-identity on this data.
    sim_out = np.concatenate([sims["Simulator parametric"].run(x) for x in batches])
    plain_out = np.concatenate([plain_sim.run(None, {"input": x})[0] for x in batches])
    bit_identical = bool(np.array_equal(sim_out.view(np.uint32), plain_out.view(np.uint32)))
    fp_out = np.concatenate([fp32_fast.run(None, {"input": x})[0] for x in batches])

    # Peak memory of a streamed evaluation: Python heap for 2,500 vs 10,000 images.
    small, large = zoo.model_dataset(MODEL, "test").take(2500), zoo.model_dataset(MODEL, "test")
    memory = {
        "eval python heap peak MB, 2500 images": round(_peak_python_mb(
            lambda: evaluate(sims["Simulator parametric"], small, ("top1",), progress=False)), 1),
        "eval python heap peak MB, 10000 images": round(_peak_python_mb(
            lambda: evaluate(sims["Simulator parametric"], large, ("top1",), progress=False)), 1),
        "process max RSS MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }

    result = {
        "machine": {"cpus_available": available_cpus(), "processor": platform.processor() or platform.machine(),
                    "onnxruntime": ort.__version__, "onnx": onnx.__version__, "python": sys.version.split()[0],
                    "loadavg_at_end": os.getloadavg()},
        "model": MODEL, "images": n_images, "batch_size": 256, "rounds": rounds,
        "plan": "dfp 8-bit on every Conv/Gemm input, weight and output (BN folded by the passes)",
        "top1": {"fp32": float(np.mean(fp_out.argmax(1) == labels)),
                 "simulated": float(np.mean(sim_out.argmax(1) == labels))},
        "simulator_bit_identical_to_plain_session": bit_identical,
        "throughput": throughput,
        "ratio_simulated_over_fp32": throughput["Simulator parametric"]["ratio_to_fp32_best"],
        "session_creation_s": {k: round(v, 4) for k, v in creation.items()},
        "prepare_s": round(t_prepare, 3),
        "format_change": format_change,
        "memory": memory,
        "kernel": kernel_benchmark(),
        "core": core_benchmark(rounds),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _print(result)
    print(f"\nwrote {args.out}")
    return 0


def _print(r: dict) -> None:
    print(f"{r['model']}, {r['images']} images, batch {r['batch_size']}, {r['rounds']} interleaved rounds, "
          f"{r['machine']['cpus_available']} CPUs, onnxruntime {r['machine']['onnxruntime']}")
    print(f"top-1 fp32 {r['top1']['fp32']:.4f}  simulated {r['top1']['simulated']:.4f}  "
          f"bit-identical to plain session: {r['simulator_bit_identical_to_plain_session']}")
    print(f"\n{'option':52} {'img/s best':>10} {'median':>8} {'cpu us/img':>10} {'ratio':>6} {'cpu-ratio':>9}")
    for name, v in r["throughput"].items():
        print(f"{name:52} {v['images_per_s_best']:10.0f} {v['images_per_s_median']:8.0f} "
              f"{v['cpu_us_per_image_best']:10.0f} {v['ratio_to_fp32_best']:6.3f} {v['ratio_to_fp32_cpu']:9.3f}")
    print(f"\nsimulated / fp32 (Simulator parametric, best rounds): {r['ratio_simulated_over_fp32']:.3f}")
    print("\nsession creation (s):")
    for k, v in r["session_creation_s"].items():
        print(f"  {k:55} {v:.3f}")
    print("format change:", r["format_change"])
    print("memory:", r["memory"])
    print("kernel:", r["kernel"])
    core = r["core"]
    print("\ncore benchmark:", core["network"])
    for name, v in core["throughput"].items():
        print(f"  {name:30} {v['images_per_s_best']:8.0f} img/s  ratio {v['ratio_to_fp32']:.3f}")
    print(f"  weight quantizers folded at session creation: {core['weight_quantizers_folded']} "
          f"(Round nodes left: {core['round_nodes']} = activation quantizers {core['activation_quantizers']}; "
          f"ops reading weights: {core['ops_reading_a_weight_initializer']})")


if __name__ == "__main__":
    raise SystemExit(main())
