"""Session factory: weight quantizers fold away, and the NCHWc layout pass changes no number."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ristretto_onnx.runtime.layout import keep_blocked_layout, static_shapes
from ristretto_onnx.runtime.lowering import lower
from ristretto_onnx.runtime.session import (available_cpus, create_session, default_providers,
                                            optimized_model, session_options)
from tests.builders import annotate, images, residual_cnn


def test_threads_follow_the_affinity_mask():
    import os

    assert session_options().intra_op_num_threads == available_cpus() == len(os.sched_getaffinity(0))
    assert default_providers()[-1] == "CPUExecutionProvider"


def test_weight_quantizers_fold_away_at_session_creation():
    model = annotate(residual_cnn())
    optimized = optimized_model(model)
    weights = {"w1", "w2", "w3", "wf"}
    # Nothing of a quantizer body is computed from a weight at run time: every node that reads
    # a weight is a convolution or matrix product, and no Round reads an initializer.
    for node in optimized.graph.node:
        assert not (set(node.input) & weights and node.op_type in ("Round", "Mul", "Clip")), node
    assert not any(n.domain == "ai.ristretto" for n in optimized.graph.node)
    counts = Counter(n.op_type for n in optimized.graph.node)
    assert counts["Round"] == 8  # the 8 activation quantizers, none for the 4 weights


def test_blocked_layout_removes_reorders_and_keeps_every_bit():
    lowered = lower(annotate(residual_cnn()), parametric=False)
    optimized = optimized_model(lowered.model)
    blocked = keep_blocked_layout(optimized, static_shapes(lowered.model))
    assert blocked is not None

    def reorders(m):
        return sum(n.op_type in ("ReorderInput", "ReorderOutput") for n in m.graph.node)

    assert reorders(blocked) < reorders(optimized)
    x = images(32)
    plain = create_session(lowered.model).run(None, {"input": x})[0]
    fast = create_session(lowered.model, blocked_layout=True).run(None, {"input": x})[0]
    assert np.array_equal(plain.view(np.uint32), fast.view(np.uint32))
