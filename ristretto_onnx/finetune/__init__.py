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

from ristretto_onnx.finetune.torch_dep import INSTALL_HINT, require_torch

__all__ = ["INSTALL_HINT", "require_torch"]


def __getattr__(name: str):
    # The public API, imported lazily so ``import ristretto_onnx.finetune`` never needs torch.
    if name in ("finetune", "FinetuneOptions", "FinetuneResult"):
        from ristretto_onnx.finetune import trainer

        return getattr(trainer, name)
    if name in ("compress_finetune", "CompressFinetuneResult"):
        from ristretto_onnx.finetune import compress_driver

        return getattr(compress_driver, name)
    raise AttributeError(name)
