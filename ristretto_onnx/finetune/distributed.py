"""Data-parallel fine-tuning under ``torchrun``: one model replica per process (issue 16, deliver 3).

Thesis 9.3 fine-tunes on one GPU; a large network needs several. When the process was started by
``torchrun`` (the environment holds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``), the trainer
wraps its module in :class:`torch.nn.parallel.DistributedDataParallel` (gloo on the CPU, NCCL
on CUDA, one GPU per local rank) and keeps the single-process result:

* every rank draws the same batch order (same seed) and takes its contiguous slice of each
  *global* batch (``--batch-size`` stays the global batch size);
* the local loss is the *sum* over the slice times ``world_size / global_batch``, so DDP's
  gradient average equals the gradient of the mean over the global batch for any slice sizes
  (the last, short batch included);
* the stochastic-rounding generator has the same seed on every rank and draws the same numbers
  in the same order, so every rank's forward pass uses identical quantized weights; after every
  epoch a checksum of the shadow weights and the generator state is compared across ranks;
* only rank 0 scores with onnxruntime, decides the best epoch and writes the model; it
  broadcasts the scores, so every rank returns the same :class:`FinetuneResult`.

Same seed, same global batch: the same model as one process, up to the order of float32
summation in the gradient reduction.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import os
import warnings
from dataclasses import dataclass

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.finetune.torch_dep import require_torch

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: its rank among ``world_size`` and on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks_from_env(env=None) -> Ranks:
    """The ranks ``torchrun`` put in the environment; one process (rank 0 of 1) without them."""
    env = os.environ if env is None else env
    if not all(k in env for k in ENV_VARS):
        return Ranks()
    try:
        rank, world, local = (int(env[k]) for k in ENV_VARS)
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise RistrettoError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    if not (0 <= rank < world and 0 <= local < local_world):
        raise RistrettoError(f"inconsistent torchrun ranks: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return Ranks(rank, world, local, local_world)


def local_device(device: str, ranks: Ranks) -> str:
    """One GPU per local rank (``cuda`` -> ``cuda:LOCAL_RANK``); the CPU as asked."""
    if ranks.active and device == "cuda":
        return f"cuda:{ranks.local_rank}"
    return device


def setup(ranks: Ranks, device: str) -> None:
    """Join the process group (once per process); gloo on the CPU, NCCL on CUDA."""
    torch = require_torch()
    import torch.distributed as dist

    if not ranks.active or dist.is_initialized():
        return
    if not dist.is_available():
        raise RistrettoError("this torch build has no torch.distributed; run fine-tuning without torchrun")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    try:
        # rank 0 scores every epoch in onnxruntime while the others wait: allow long validations
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(hours=2))
    except (RuntimeError, ValueError) as e:
        raise RistrettoError(f"could not join the torchrun process group ({backend}): {e}") from None
    atexit.register(_teardown)


def _teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(module, device: str):
    """The module under DistributedDataParallel (every parameter gets a gradient every step)."""
    require_torch()
    from torch.nn.parallel import DistributedDataParallel

    # channels_last weights (the CPU path) get contiguous bucket views: one copy per step, no harm
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [int(device.split(":")[1])] if device.startswith("cuda:") else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def local_slice(n: int, ranks: Ranks) -> slice:
    """This rank's contiguous part of a global batch of ``n`` (sizes differ by at most one)."""
    base, extra = divmod(n, ranks.world_size)
    start = ranks.rank * base + min(ranks.rank, extra)
    return slice(start, start + base + (ranks.rank < extra))


def broadcast(value, ranks: Ranks):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not ranks.active:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: list[float], ranks: Ranks, device) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64)."""
    if not ranks.active:
        return list(values)
    torch = require_torch()
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def check_in_step(module, generator, ranks: Ranks) -> None:
    """Raise unless every rank holds the same shadow weights and stochastic-rounding state."""
    if not ranks.active:
        return
    import torch.distributed as dist

    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    h.update(generator.get_state().numpy().tobytes())
    digests = [None] * ranks.world_size
    dist.all_gather_object(digests, h.hexdigest())
    if len(set(digests)) != 1:
        raise RistrettoError("data-parallel fine-tuning diverged: the ranks hold different shadow weights "
                             "or stochastic-rounding states")
