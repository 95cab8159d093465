"""Exports of a simulated model for deployment and hardware (issue 13; thesis 9.7.3).

The simulated model (``QuantizeSim`` nodes, thesis fig. 2.9) is the contract; every export
reproduces it and says where it cannot. This registry maps each ``export --to`` target to the
function that writes it, imported only when that target is asked for:

* ``qdq``: standard QuantizeLinear/DequantizeLinear (:mod:`.qdq`), an ONNX model;
* ``qonnx``: QONNX ``Quant``/``FloatQuant`` nodes (:mod:`.qonnx`), an ONNX model;
* ``integer``: the bit-true integer data path (:mod:`.integer`), an ONNX model;
* ``c``: the C99 golden model (:mod:`.c_model`), a folder.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ristretto_onnx.errors import RistrettoError


@dataclass(frozen=True)
class Exporter:
    """One ``--to`` target: ``module:function`` and whether it writes a model or a folder."""

    name: str
    target: str
    writes: str  # "model" (function(sim) -> ModelProto) or "folder" (function(sim, outdir) -> None)
    summary: str

    def load(self) -> Callable:
        module_name, _, function = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                raise RistrettoError(f"--to {self.name} is not available in this build "
                                     f"({module_name} is missing)") from None
            raise
        return getattr(module, function)


EXPORTERS: dict[str, Exporter] = {e.name: e for e in (
    Exporter("qdq", "ristretto_onnx.export.qdq:export_qdq", "model",
             "QuantizeLinear/DequantizeLinear, power-of-two scales, zero point 0"),
    Exporter("qonnx", "ristretto_onnx.export.qonnx:export_qonnx", "model",
             "QONNX Quant/FloatQuant nodes (FINN, hls4ml)"),
    Exporter("integer", "ristretto_onnx.export.integer:export_integer", "model",
             "bit-true integer data path with int32 accumulation"),
    Exporter("c", "ristretto_onnx.export.c_model:export_c", "folder",
             "C99 golden model (header, source, main, Makefile)"),
)}


def get_exporter(name: str) -> Exporter:
    try:
        return EXPORTERS[name.lower()]
    except KeyError:
        raise RistrettoError(f"unknown export target {name!r}; expected one of "
                             f"{', '.join(EXPORTERS)}") from None
