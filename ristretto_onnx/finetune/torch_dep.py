"""torch, the fine-tuning package's one optional dependency: imported on demand, with a one-line
error that says how to install it (the rest of the package never imports torch at import time)."""

from __future__ import annotations

import os
import sys

from ristretto_onnx.errors import RistrettoError

INSTALL_HINT = "pip install 'ristretto-onnx[finetune]'"


def require_torch():
    """The ``torch`` module, or a one-line error that says how to install it.

    Before torch is first imported, OpenMP's idle threads are told to sleep instead of spinning
    (``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it): on a shared machine spinning
    threads burn the cores the others wait for. ResNet-20 training steps at load 15 on 2 cores
    (bench/finetune_epoch.py's batch of 128): 14.1 s wall and 2.3 CPU-s spinning, 2.0 s and
    0.5 CPU-s passive."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        raise RistrettoError(f"fine-tuning needs PyTorch, which is not installed: {INSTALL_HINT}") from None
    return torch
