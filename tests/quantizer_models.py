"""QuantizeSim-only models for the op tests (one input ``x``, one output per format), and the
bit-for-bit comparison the op and kernel tests share. Imported through :mod:`tests.builders`."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ristretto_onnx.ops import attach_functions, make_quantize_node
from ristretto_onnx.runtime.session import create_session


def quantizer_model(formats: list[str], rounding: str = "nearest_even", opset: int = 17) -> onnx.ModelProto:
    """One input ``x``, one QuantizeSim output ``y{i}`` per format (all in one session)."""
    nodes = [make_quantize_node("x", f"y{i}", f, rounding=rounding) for i, f in enumerate(formats)]
    graph = helper.make_graph(
        nodes, "quantizers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["N"]) for i in range(len(formats))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return attach_functions(model)


def run_quantizers(formats: list[str], x: np.ndarray, rounding: str = "nearest_even") -> list[np.ndarray]:
    sess = create_session(quantizer_model(formats, rounding), kernels=False)  # the function bodies
    return sess.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise bit equality of float32 arrays; any NaN matches any NaN."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
