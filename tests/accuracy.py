"""Top-1 of a model on a labelled dataset, in a plain project session (tests' shared helper)."""

from __future__ import annotations

from ristretto_onnx.runtime.session import create_session


def top1(model, data, batch: int = 1000) -> float:
    """The share of ``data``'s images whose largest output is their label."""
    sess = create_session(model)
    name = sess.get_inputs()[0].name
    hits = sum(int((sess.run(None, {name: x})[0].argmax(1) == y).sum()) for x, y in data.batches(batch))
    return hits / len(data)
