"""How many onnxruntime sessions a Simulator may keep, from the memory each one holds.

Each session keeps its CPU memory arena at the largest size a run needed: on ImageNet-size
inputs that is most of a batch's activations (SqueezeNet 1.1 at 128 images: about 825 MB per
session, measured with ``/proc/self/statm``). The Simulator keeps up to 8 sessions (one per
weight assignment a search revisits), so a search on such a model at the default batch of 256
held 10-16 GB and an EfficientNet-Lite0 ``compress`` was killed for memory. Shrinking the arena
after every run would bound it too, but costs 15-20 % of run time (ResNet-20 0.196 -> 0.241 s,
SqueezeNet 0.787 -> 0.901 s per batch), so instead the cache is sized by memory: the growth of
this process's resident memory during a new session's first run estimates what a session holds,
and the cache keeps as many as fit in :data:`BUDGET_SHARE` of the machine's memory (at least
one). CIFAR-size models (ResNet-20: about 100 MB a session at 256 images) keep all 8.
Where the resident size cannot be read (not Linux), nothing changes.
"""

from __future__ import annotations

import os

#: Share of the machine's physical memory the cached sessions of one Simulator may hold.
BUDGET_SHARE = 0.25


def resident_bytes() -> int | None:
    """This process's resident memory, or None where it cannot be read cheaply."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def physical_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def sessions_that_fit(session_bytes: int, limit: int, total: int | None = None) -> int:
    """How many sessions of ``session_bytes`` each to keep: at most ``limit``, at least one."""
    total = physical_bytes() if total is None else total
    if not total or session_bytes <= 0:
        return limit
    return max(1, min(limit, int(total * BUDGET_SHARE) // session_bytes))
