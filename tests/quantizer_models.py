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


def literal_model(written: onnx.ModelProto) -> onnx.ModelProto:
    """``written`` (set_formats' output) with every quantized slot its own QuantizeSim and every
    ReLU a ReLU: the data path as the thesis draws it, without the reuse set_formats does."""
    from ristretto_onnx.passes.slots import read_plan, read_skipped_relus, read_slots, write_skipped_relus

    out = onnx.ModelProto()
    out.CopyFrom(written)
    plan, skipped = read_plan(out), set(read_skipped_relus(out))
    slots = {s.node: s for s in read_slots(out)}
    rounding = next((p.value for p in out.metadata_props if p.key == "ristretto.rounding"), "nearest_even")
    for i, node in enumerate(out.graph.node):
        slot = slots.get(node.name)
        if node.op_type == "Identity" and slot is not None and plan.get(slot.group) is not None:
            out.graph.node[i].CopyFrom(make_quantize_node(slot.source, slot.output, plan[slot.group],
                                                          rounding=rounding, name=node.name, rank=slot.rank))
        elif node.op_type == "Identity" and node.name in skipped:
            node.op_type = "Relu"
    write_skipped_relus(out, ())
    return attach_functions(out)
