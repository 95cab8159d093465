"""Per-channel maxima of the tensors that cross-layer equalization scales (its links).

passes.equalize balances two convolutions' weights by moving a positive factor per channel
between them; the tensor between them scales by the inverse factor, and its per-tensor
activation format (thesis ch. 5: one fractional length per layer output) has to cover every
channel. The data-aware rule there needs each link channel's largest |x| on the calibration
data, measured here in the FP32 model in one streamed pass.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper

from ristretto_onnx.passes.equalize import links
from ristretto_onnx.passes.graph import runtime_inputs
from ristretto_onnx.runtime.calibrate import session_any_size


def link_max(model: ModelProto, data, *, batch_size: int = 64, threads: int | None = None,
             names: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{link tensor: max |x| per channel (axis 1)}`` over ``data`` in ``model`` (``names``:
    these tensors instead of the links)."""
    names = links(model) if names is None else list(names)
    if not names:
        return {}
    probe = ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for t in names:
        if t not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    session = session_any_size(probe, threads=threads)
    feed = runtime_inputs(probe)[0]
    out: dict[str, np.ndarray] = {}
    for x, _ in data.batches(batch_size):
        for name, v in zip(names, session.run(names, {feed: np.ascontiguousarray(x, np.float32)})):
            v = np.abs(np.asarray(v, np.float32))
            m = v.max(axis=tuple(d for d in range(v.ndim) if d != 1))
            out[name] = np.maximum(out[name], m) if name in out else m
    return out
