"""Fine-tuning in the discrete parameter space (thesis section 9.3, fig. 9.2).

After quantization, the simulated model is turned into a torch module whose weights are
full-precision *shadow weights*; every batch the forward pass uses them quantized with seeded
stochastic rounding, the gradients pass straight through to the shadow weights, and every epoch
the exact simulated model (round-half-to-even, quantized layer outputs) is scored in onnxruntime.
The best epoch's weights are written back into the ONNX model by name.

torch is an optional dependency (``pip install 'ristretto-onnx[finetune]'``); the rest of the
package never imports it, and this package imports it only when a function needs it.
"""

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


def __getattr__(name: str):
    # The public API, imported lazily so ``import ristretto_onnx.finetune`` never needs torch.
    if name in ("finetune", "FinetuneOptions", "FinetuneResult"):
        from ristretto_onnx.finetune import trainer

        return getattr(trainer, name)
    if name in ("compress_finetune", "CompressFinetuneResult"):
        from ristretto_onnx.finetune import compress_driver

        return getattr(compress_driver, name)
    raise AttributeError(name)
