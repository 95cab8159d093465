"""onnxruntime's own static int8 quantizer, run the way a user would, for side-by-side numbers.

``onnxruntime.quantization.quantize_static`` in QDQ format is the baseline a user of stock
onnxruntime would reach for. It scales every tensor by an arbitrary float (``scale``, plus a
zero point for unsigned activations), whereas Ristretto's dynamic fixed point only allows powers
of two; comparing the two at 8 bits shows what that hardware-friendly restriction costs.

The quantizer gets exactly the calibration images our ranges come from (the same preprocessed
batches, through a :class:`BatchReader`) and the quantized model is scored on the same test
batches, so the only difference left is the quantization itself.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

#: Calibration methods compared (thesis-style "max |x|" is MinMax; the others clip outliers).
METHODS = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy,
           "Percentile": CalibrationMethod.Percentile}


class BatchReader(CalibrationDataReader):
    """Feeds fixed, already preprocessed batches to the calibrator, one ``{input: x}`` at a time.

    Restartable (``rewind``) because the quantizer may read the data more than once.
    """

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = list(batches)
        self._next = 0

    def get_next(self):
        if self._next >= len(self.batches):
            return None
        x = self.batches[self._next]
        self._next += 1
        return {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self) -> None:
        self._next = 0


@dataclass(frozen=True)
class OrtQuantConfig:
    """One quantize_static setting: weight granularity and calibration method."""

    per_channel: bool
    method: str  # key of METHODS

    @property
    def label(self) -> str:
        return f"{'per-channel' if self.per_channel else 'per-tensor'} {self.method}"


def default_configs() -> list[OrtQuantConfig]:
    return [OrtQuantConfig(pc, m) for pc in (False, True) for m in METHODS]


@dataclass
class OrtQuantized:
    config: OrtQuantConfig
    path: Path
    seconds: float  # pre-processing + calibration + quantization


def preprocess_for_quantization(model_path: str | Path, work_dir: Path) -> Path:
    """onnxruntime's recommended pre-processing (shape inference, BN folding), written once.

    Our pipeline folds BatchNormalization too, so both quantizers see the same arithmetic.
    """
    out = work_dir / (Path(model_path).stem + "-pre.onnx")
    quant_pre_process(str(model_path), str(out), skip_symbolic_shape=False)
    return out


def quantize(pre_model: Path, input_name: str, calib_batches: Sequence[np.ndarray], config: OrtQuantConfig,
             work_dir: Path) -> OrtQuantized:
    """int8 QDQ model for one config: QUInt8 activations, QInt8 symmetric weights.

    That is onnxruntime's documented choice for x86 CPUs with VNNI (this machine's EPYC has it),
    so ``reduce_range`` stays off.
    """
    out = work_dir / f"{pre_model.stem}-{'pc' if config.per_channel else 'pt'}-{config.method.lower()}.onnx"
    t = time.perf_counter()
    quantize_static(str(pre_model), str(out), BatchReader(input_name, calib_batches),
                    quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=METHODS[config.method], reduce_range=False)
    seconds = time.perf_counter() - t
    _ir_version_for_runtime(out)
    return OrtQuantized(config, out, seconds)


def _ir_version_for_runtime(path: Path) -> None:
    """onnx 1.23 may write IR 14; onnxruntime 1.31 reads up to 13. Pin what the opsets need."""
    m = onnx.load(str(path))
    if m.ir_version > 10:
        m.ir_version = 10
        onnx.save(m, str(path))


def work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ristretto-ortq-"))
