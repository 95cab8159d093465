"""ristretto-onnx: hardware-oriented approximation of CNNs, as an ONNX model-to-model compiler.

The package re-creates Ristretto (Gysel 2016) on ONNX: number formats (:mod:`ristretto_onnx.formats`),
the ``QuantizeSim`` op that simulates them (:mod:`ristretto_onnx.ops`), graph passes
(:mod:`ristretto_onnx.passes`), an onnxruntime-based runtime (:mod:`ristretto_onnx.runtime`) and
a zoo of models and datasets (:mod:`ristretto_onnx.zoo`).
"""

__version__ = "0.1.0"

# The package root wires the layers together: the zoo registers its ``zoo:NAME`` datasets with
# the data layer (which never imports the zoo itself).
from ristretto_onnx import zoo as _zoo  # noqa: E402,F401
