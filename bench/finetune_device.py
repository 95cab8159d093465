"""Fine-tuning on a CUDA GPU: one epoch of ResNet-20, timed, against the CPU (issue 12, item 5).

    RISTRETTO_ZOO=/path/to/zoo python bench/finetune_device.py

Self-contained (the repository and the zoo are all it needs; runs from a plain checkout too).
Quantizes resnet20-cifar10 to dynamic fixed point with 4-bit weights and 8-bit layer inputs and
outputs, then:

1. checks that the GPU computes what the CPU computes: the same batch through the same module on
   both devices (eval mode: logits, agreement of the top-1 class; train mode: the first step's
   loss with the same stochastic rounding, whose random numbers come from one CPU generator);
2. fine-tunes one epoch on the 10,000 CIFAR-10 training images on the GPU with the CPU run's
   settings (batch 128, Adam 1e-4, seed 0) and scores before and after with the exact simulated
   model in onnxruntime on the 10,000 test images;
3. times 8 training steps of the same settings on this machine's CPU, for an epoch estimate.

Prints one JSON line. Finishes in well under 4 minutes on a datacenter GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _importable_package() -> None:
    """Map passes/, runtime/ and zoo/ to ristretto_onnx.* when the package is not installed."""
    try:
        import ristretto_onnx.passes.slots  # noqa: F401
        import ristretto_onnx.runtime.simulator  # noqa: F401
        import ristretto_onnx.zoo  # noqa: F401
        return
    except ImportError:
        pass
    import ristretto_onnx

    for sub in ("passes", "runtime", "zoo"):
        name = f"ristretto_onnx.{sub}"
        spec = importlib.util.spec_from_file_location(name, REPO / sub / "__init__.py",
                                                      submodule_search_locations=[str(REPO / sub)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        setattr(ristretto_onnx, sub, module)
        spec.loader.exec_module(module)


def main() -> dict:
    t_all = time.perf_counter()
    _importable_package()
    import numpy as np
    import torch

    from ristretto_onnx import zoo
    from ristretto_onnx.finetune.converter import OnnxModule
    from ristretto_onnx.finetune.trainer import FinetuneOptions, finetune
    from ristretto_onnx.quantize import QuantizeOptions, quantize

    out: dict = {"bench": "finetune_device", "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    smoke = os.environ.get("FINETUNE_DEVICE_SMOKE") == "1"  # a CPU dry run of this script (tests)
    gpu = "cuda" if not smoke else "cpu"
    if not torch.cuda.is_available() and not smoke:
        out["error"] = "torch sees no CUDA device"
        print(json.dumps(out))
        return out
    out["gpu"] = torch.cuda.get_device_name(0) if not smoke else "none (smoke run)"
    out["cpus"] = len(os.sched_getaffinity(0))
    t = time.perf_counter()
    calib = zoo.model_dataset("resnet20-cifar10", "calib")
    q = QuantizeOptions(scheme="dfp", weight_bits=4, act_bits=8, calib_size=500)
    sim = quantize(str(zoo.resolve_model("zoo:resnet20-cifar10")), q, calib).model
    out["quantize_seconds"] = round(time.perf_counter() - t, 1)
    train = zoo.model_dataset("resnet20-cifar10", "train")
    test = zoo.model_dataset("resnet20-cifar10", "test")
    if smoke:
        train, test = train.take(256), test.take(256)

    # 1. the same computation on both devices
    x, y = next(train.batches(128))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    mods = {d: OnnxModule(sim).to(d) for d in dict.fromkeys(("cpu", gpu))}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        lc = mods["cpu"].eval()(xt).numpy()
        lg = mods[gpu].eval()(xt.to(gpu)).cpu().numpy()
    losses = {}
    for d, m in mods.items():
        m.train()
        m.generator = torch.Generator().manual_seed(1)
        losses[d] = float(torch.nn.functional.cross_entropy(m(xt.to(d), logits=True), yt.to(d)))
    out["eval_logits_max_abs_diff"] = float(np.abs(lc - lg).max())
    out["eval_top1_agreement"] = float((lc.argmax(1) == lg.argmax(1)).mean())
    out["train_loss_first_batch"] = {d: round(v, 6) for d, v in losses.items()}

    # 2. one epoch on the GPU
    opts = FinetuneOptions(epochs=1, lr=1e-4, batch_size=128, seed=0, device=gpu, schedule="cosine")
    r = finetune(sim, train, test, options=opts, log=lambda m: print(m, file=sys.stderr, flush=True))
    out.update({"epoch_train_seconds_cuda": round(r.epochs[1].train_seconds, 2),
                "score_seconds": round(r.epochs[1].score_seconds, 2),
                "fp32": r.fp32, "before": r.before, "after": r.after, "headline": r.headline})

    # 3. the same steps on the CPU
    m = OnnxModule(sim)
    m.train()
    m.generator = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    steps, times = (8 if not smoke else 2), []
    for i, (xb, yb) in enumerate(train.batches(128)):
        if i == steps + 1:
            break
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(m(torch.from_numpy(xb), logits=True), torch.from_numpy(yb))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    per_step = sum(times) / len(times)
    out["epoch_train_seconds_cpu_estimate"] = round(per_step * -(-len(train) // 128), 1)
    out["cpu_threads"] = torch.get_num_threads()
    out["total_seconds"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
