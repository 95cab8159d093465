"""Per-channel maxima of the tensors that cross-layer equalization scales (its links).

passes.equalize balances two convolutions' weights by moving a positive factor per channel
between them; the tensor between them scales by the inverse factor, and its per-tensor
activation format (thesis ch. 5: one fractional length per layer output) has to cover every
channel. The data-aware rule there needs each link channel's largest |x| on the calibration
data, measured here in the FP32 model in one streamed pass.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto

from ristretto_onnx.moments import channel_stats
from ristretto_onnx.passes.equalize import links


def link_max(model: ModelProto, data, *, batch_size: int = 64, threads: int | None = None,
             names: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{link tensor: max |x| per channel (axis 1)}`` over ``data`` in ``model`` (``names``:
    these tensors instead of the links)."""
    names = links(model) if names is None else list(names)
    if not names:
        return {}
    stats = channel_stats(model, {t: (t, 1) for t in names}, (x for x, _ in data.batches(batch_size)),
                          threads=threads)
    return {t: stats[t].peak.astype(np.float32) for t in names}
