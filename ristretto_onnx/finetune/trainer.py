"""Fine-tuning with full-precision shadow weights (thesis 9.3, fig. 9.2): the ``finetune`` job.

    result = finetune("lenet-dfp.onnx", "zoo:mnist-train", "zoo:mnist-test", epochs=5)
    result.save("lenet-dfp-ft.onnx")          # + lenet-dfp-ft.json
    print(result.headline)                     # "top1 98.81 % (98.03 %) ..." as the thesis reports

Every batch the forward pass uses the shadow weights quantized with seeded stochastic rounding;
layer outputs stay float as in the thesis (``quantize_activations`` trains through the activation
quantizers, straight through); Adam (the thesis's rule) or SGD with momentum updates the shadow
weights. After every epoch the weights are written into the ONNX model and the *exact* simulated
model (half-to-even, quantized layer outputs) is scored in onnxruntime on the validation data;
the best epoch (epoch 0 = the model as given) wins, so fine-tuning never returns a worse model
than it was given. Ctrl-C stops after the current batch and keeps the best epoch so far.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from onnx import ModelProto

from ristretto_onnx import __version__
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.finetune.torch_dep import require_torch
from ristretto_onnx.finetune.writeback import write_back

Log = Callable[[str], None]


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: int = 5
    lr: float = 1e-4  # Adam; the thesis: an order of magnitude below the last training rate
    batch_size: int = 64
    optimizer: str = "adam"  # or "sgd" (with momentum)
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # or "constant": learning rate over the epochs
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    quantize_activations: bool = False
    #: thesis: stochastic; nearest_even is deterministic straight-through training (beyond the
    #: thesis: at 2-3 bits with the max range rule, stochastic rounding's noise can swamp training)
    weight_rounding: str = "stochastic"
    metric: str = "top1"
    tolerance: float | None = None  # default: the compress run's, else 0.01
    tolerance_mode: str = "absolute"
    train_size: int | None = None  # a seeded subset of the training data
    score_batch_size: int = 256
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise RistrettoError("--epochs must be at least 1")
        if not self.lr > 0:
            raise RistrettoError("--lr must be positive")
        if self.batch_size < 1 or self.score_batch_size < 1:
            raise RistrettoError("--batch-size must be positive")
        if self.optimizer not in ("adam", "sgd"):
            raise RistrettoError(f"--optimizer must be adam or sgd, not {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise RistrettoError(f"--schedule must be cosine or constant, not {self.schedule!r}")
        if self.tolerance_mode not in ("absolute", "relative"):
            raise RistrettoError("--tolerance-mode must be absolute or relative")
        if self.weight_rounding not in ("stochastic", "nearest_even"):
            raise RistrettoError(f"--weight-rounding must be stochastic or nearest_even, not {self.weight_rounding!r}")
        if self.metric not in ("top1", "top5", "fidelity"):
            raise RistrettoError(f"--metric must be top1, top5 or fidelity, not {self.metric!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise RistrettoError(f"--device must be auto, cpu or cuda, not {self.device!r}")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float | None  # mean training loss (None for epoch 0, the model as given)
    score: float
    train_seconds: float
    score_seconds: float
    train_cpu_seconds: float = 0.0  # process CPU time of the training (a load-independent measure)


@dataclass
class FinetuneResult:
    """The best model, its score and the model's score before fine-tuning ("after (before)")."""

    model: ModelProto = field(repr=False)
    metric: str
    fp32: float
    before: float
    after: float
    best_epoch: int
    tolerance: float
    holds: bool
    epochs: list[EpochRecord]
    interrupted: bool
    device: str
    n_train: int
    n_score: int
    seconds: float
    options: dict
    weights: dict = field(default_factory=dict, repr=False)  # best shadow weights by name
    world_size: int = 1  # processes under torchrun (data parallel); 1 otherwise
    rank: int = 0

    @property
    def drop(self) -> float:
        return self.fp32 - self.after

    @property
    def headline(self) -> str:
        """As the thesis reports: after (before), e.g. ``top1 98.81 % (98.03 %)``."""
        return (f"{self.metric} {100 * self.after:.2f} % ({100 * self.before:.2f} %) after (before) "
                f"fine-tuning; FP32 {100 * self.fp32:.2f} %, drop {100 * self.drop:.2f} points, "
                f"tolerance {100 * self.tolerance:.2f} points {'holds' if self.holds else 'NOT met'}")

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("model", "weights")}
        d["drop"] = self.drop
        d["headline"] = self.headline
        d["version"] = __version__
        return d

    def save(self, path: str | os.PathLike, report_path: str | os.PathLike | None = None) -> tuple[Path, Path]:
        """Write the fine-tuned model and its JSON report (default: next to it, ``.json``).

        Under torchrun only rank 0 writes; the other ranks return the same paths, writing nothing."""
        from ristretto_onnx.passes.save import save_model, write_text_atomic

        path = Path(path)
        report_path = Path(report_path) if report_path else path.with_suffix(".json")
        if self.rank != 0:
            return path, report_path
        save_model(self.model, path)
        write_text_atomic(report_path, json.dumps(self.to_dict(), indent=2))
        return path, report_path


def resolve_device(name: str) -> str:
    torch = require_torch()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RistrettoError("--device cuda: torch sees no CUDA device (is a CUDA build of torch installed?)")
    return name


def _tolerance(model: ModelProto, opts: FinetuneOptions, baseline: float) -> float:
    tol, mode = opts.tolerance, opts.tolerance_mode
    if tol is None:
        from ristretto_onnx.passes.slots import get_metadata

        summary = get_metadata(model, "ristretto.compress")
        info = json.loads(summary) if summary else {}
        tol = float(info.get("tolerance", 0.01))
        mode = info.get("tolerance_mode", "absolute")
    return tol * (baseline if mode == "relative" else 1.0)


class _ExactScorer:
    """Scores weight sets with the exact simulated model in onnxruntime (fig. 9.2, right side)."""

    def __init__(self, model: ModelProto, data, metric: str, batch_size: int, threads: int | None) -> None:
        from ristretto_onnx.runtime.simulator import Simulator
        from ristretto_onnx.scoring import Scorer

        self.model = model
        self.threads = threads
        fp32 = Simulator(model, threads=threads)
        fp32.set_formats({}, replace=True)
        self._run = None
        batches = [(np.ascontiguousarray(x, dtype=np.float32), y) for x, y in data.batches(batch_size)]
        self.scorer = Scorer(batches, lambda plan, x: self._run(x), fp32.run, metric=metric,
                             screen_fraction=1.0)
        self.n = self.scorer.n

    def score(self, weights: dict | None) -> float:
        from ristretto_onnx.runtime.simulator import Simulator

        model = self.model if weights is None else write_back(self.model, weights)
        self._run = Simulator(model, threads=self.threads).run
        self.scorer.forget()  # same (empty) plan, new weights: the scorer's cache must not answer
        return self.scorer.score({}).value


def finetune(model, train_data, data, *, options: FinetuneOptions | None = None, log: Log | None = None,
             progress: bool | None = None, baseline: float | None = None, **kwargs) -> FinetuneResult:
    """Fine-tune a simulated model (path or ModelProto); see the module docstring.

    ``train_data`` and ``data`` are anything :func:`~ristretto_onnx.data.load_dataset` takes
    (``zoo:mnist-train``, a path, arrays, a Dataset); ``data`` scores every epoch. Options are
    :class:`FinetuneOptions` fields, as ``options=`` or keywords. ``baseline``: the FP32 score
    the tolerance is checked against (default: the model with every quantizer removed, which is
    the FP32 model only while the weights are the original ones).

    Launched by ``torchrun``, every process runs this with the same arguments and the training
    is data parallel (:mod:`ristretto_onnx.finetune.distributed`): the same model as one process.
    """
    torch = require_torch()
    from ristretto_onnx.data import Dataset, load_dataset
    from ristretto_onnx.finetune import distributed as dp  # only under torchrun
    from ristretto_onnx.finetune.converter import OnnxModule
    from ristretto_onnx.finetune.loader import TrainBatches
    from ristretto_onnx.finetune.progress import EpochProgress
    from ristretto_onnx.runtime.session import available_cpus
    from ristretto_onnx.runtime.simulator import load_model

    opts = options or FinetuneOptions(**kwargs)
    if options is not None and kwargs:
        opts = FinetuneOptions(**{**asdict(options), **kwargs})
    ranks = dp.ranks_from_env()
    if not ranks.main:  # progress and messages from rank 0 only
        log, progress = None, False
    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    base = load_model(model)
    device = dp.local_device(resolve_device(opts.device), ranks)
    dp.setup(ranks, device)
    torch.set_num_threads(opts.threads or max(1, available_cpus() // ranks.local_world_size))
    torch.manual_seed(opts.seed)
    if device.startswith("cuda"):  # float32 as on the CPU: no TF32 (results equal up to order)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    train = train_data if isinstance(train_data, Dataset) else load_dataset(train_data)
    if opts.train_size is not None and opts.train_size < len(train):
        train = train.subset(opts.train_size, opts.seed)
    val = data if isinstance(data, Dataset) else load_dataset(data)

    module = OnnxModule(base, quantize_activations=opts.quantize_activations,
                        weight_rounding=opts.weight_rounding).to(device)
    if not module.param_names:
        raise RistrettoError("the model has no float weights of a Conv, ConvTranspose, Gemm or MatMul "
                             "layer to fine-tune")
    # oneDNN's convolutions (backward above all) are faster on NHWC: 0.46 vs 0.62 CPU-s per
    # ResNet-20 batch of 128 (bench/finetune_epoch.py); the GPU path stays as measured there.
    channels_last = device == "cpu"
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    module.generator = torch.Generator().manual_seed(opts.seed + 1)  # the same on every rank
    net = dp.wrap(module, device) if ranks.active else module
    data_gen = torch.Generator().manual_seed(opts.seed)
    batches = TrainBatches(train, device)
    # The exact scoring (onnxruntime) and the choice of the best epoch: rank 0, broadcast.
    scorer = _ExactScorer(base, val, opts.metric, opts.score_batch_size, opts.threads) if ranks.main else None
    n_score, fp32 = dp.broadcast((scorer.n, scorer.scorer.baseline) if ranks.main else None, ranks)
    fp32 = fp32 if baseline is None else float(baseline)
    tolerance = _tolerance(base, opts, fp32)

    def score(weights) -> float:
        return dp.broadcast(scorer.score(weights) if ranks.main else None, ranks)

    t = time.perf_counter()
    before = score(None)
    records = [EpochRecord(0, None, before, 0.0, time.perf_counter() - t)]
    best, best_epoch, best_weights = before, 0, module.shadow_weights()
    where = f"{device} x {ranks.world_size} processes" if ranks.active else device
    log(f"{where}: {len(train)} training images, {n_score} scored; FP32 {opts.metric} "
        f"{fp32:.4f}, before fine-tuning {before:.4f}")

    params = list(module.parameters())
    if opts.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    steps = opts.epochs * batches.batches_per_epoch(opts.batch_size)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
             if opts.schedule == "cosine" else None)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    interrupted = False
    with EpochProgress(opts.epochs, batches.batches_per_epoch(opts.batch_size), show=progress) as bar:
        bar.set_best(best)
        try:
            for epoch in range(1, opts.epochs + 1):
                net.train()
                t, cpu0 = time.perf_counter(), time.process_time()
                total = torch.zeros((), device=device)
                seen = 0
                bar.start_epoch(epoch)
                for x, y in batches.epoch(opts.batch_size, data_gen):
                    n_global, scale = len(y), float(ranks.world_size)
                    if ranks.active:  # this rank's slice of the global batch
                        part = dp.local_slice(n_global, ranks)
                        if part.stop > part.start:
                            x, y = x[part], y[part]
                        else:  # a global batch smaller than the world: a zero-weighted stand-in
                            x, y, scale = x[:1], y[:1], 0.0  # keeps this rank in DDP's all-reduce
                    if channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    loss_sum = loss_fn(net(x, logits=True), y)
                    # mean over the global batch once DDP averages the ranks' gradients
                    loss = loss_sum / n_global
                    if ranks.active:
                        loss = loss * scale
                        loss_sum = loss_sum * (scale > 0)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    total += loss_sum.detach()
                    seen += len(y) if scale else 0
                    bar.advance(float(loss_sum) / max(len(y), 1) if bar.shown else None)
                net.eval()
                train_s, train_cpu = time.perf_counter() - t, time.process_time() - cpu0
                dp.check_in_step(module, module.generator, ranks)
                loss_total, seen = dp.all_sum([float(total), seen], ranks, device)
                t = time.perf_counter()
                weights = module.shadow_weights()
                epoch_score = score(weights)
                records.append(EpochRecord(epoch, loss_total / max(seen, 1), epoch_score, train_s,
                                           time.perf_counter() - t, train_cpu))
                if epoch_score > best:
                    best, best_epoch, best_weights = epoch_score, epoch, weights
                bar.end_epoch(records[-1].loss, epoch_score, best)
                log(f"epoch {epoch}/{opts.epochs}: loss {records[-1].loss:.4f}, {opts.metric} {epoch_score:.4f} "
                    f"(best {best:.4f} at epoch {best_epoch}), train {train_s:.1f} s, "
                    f"score {records[-1].score_seconds:.1f} s")
        except KeyboardInterrupt:
            interrupted = True
            log(f"interrupted: keeping epoch {best_epoch} ({opts.metric} {best:.4f})")
    module.eval()
    summary = {"epochs": opts.epochs, "best_epoch": best_epoch, "before": round(before, 6),
               "after": round(best, 6), "fp32": round(fp32, 6), "metric": opts.metric,
               "lr": opts.lr, "optimizer": opts.optimizer, "seed": opts.seed,
               "quantize_activations": opts.quantize_activations,
               "weight_rounding": opts.weight_rounding, "tool": f"ristretto-onnx {__version__}"}
    out = write_back(base, best_weights, summary)
    return FinetuneResult(
        model=out, metric=opts.metric, fp32=fp32, before=before, after=best, best_epoch=best_epoch,
        tolerance=tolerance, holds=fp32 - best <= tolerance + 1e-12, epochs=records,
        interrupted=interrupted, device=device, n_train=len(train), n_score=n_score,
        seconds=round(time.perf_counter() - t_start, 3), options=asdict(opts), weights=best_weights,
        world_size=ranks.world_size, rank=ranks.rank)
