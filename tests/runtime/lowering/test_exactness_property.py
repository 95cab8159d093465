"""Property: for any assignment of fixed-point formats (or float), the Simulator's lowered graph
gives the same bits as the plain session of the model with those formats."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.runtime.simulator import Simulator
from tests.builders import annotate, images, residual_cnn

_MODEL = annotate(residual_cnn())
_X = images(24)
_TARGETS = Simulator(_MODEL).targets


def fixed_or_none():
    fmt = st.tuples(st.integers(2, 16), st.integers(-2, 12)).map(lambda bf: f"fixed:{bf[0]}:{bf[1]}")
    return st.one_of(st.none(), fmt, fmt)


@settings(max_examples=12, deadline=None)
@given(formats=st.fixed_dictionaries({t: fixed_or_none() for t in _TARGETS}), parametric=st.booleans())
def test_lowered_simulation_is_bit_identical(formats, parametric):
    sim = Simulator(_MODEL, parametric=parametric)
    sim.set_formats(formats)
    want = create_session(sim.model(), kernels=False).run(None, {"input": _X})[0]  # function bodies
    assert np.array_equal(sim.run(_X).view(np.uint32), want.view(np.uint32))
