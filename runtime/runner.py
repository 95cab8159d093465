"""One function ``x -> first output`` for whatever model is given: a Simulator for simulated models,
an onnxruntime session for plain ones. Local evaluation (:mod:`.evaluate`) and the Ray actors
(:mod:`.cluster`) run models the same way through it."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.ops import is_quantize_sim
from ristretto_onnx.passes.graph import single_input
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.runtime.simulator import Simulator, load_model

Runner = Callable[[np.ndarray], np.ndarray]


def _model_of(model) -> ModelProto | None:
    if isinstance(model, ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    return None


def runner_for(model, *, providers=None, threads=None) -> Runner:
    """A function ``x -> first output`` for a model, a Simulator, a session or a callable."""
    if isinstance(model, Simulator):
        return model.run
    proto = _model_of(model)
    if proto is not None:
        if any(is_quantize_sim(n) for n in proto.graph.node):
            return Simulator(proto, providers=providers, threads=threads).run
        session = create_session(proto, providers=providers, threads=threads, blocked_layout=True)
        name = single_input(proto, "evaluation")
        return lambda x: session.run(None, {name: x})[0]
    if hasattr(model, "run") and hasattr(model, "get_inputs"):  # an InferenceSession
        name = model.get_inputs()[0].name
        return lambda x: model.run(None, {name: x})[0]
    if callable(model):
        return model
    raise RistrettoError(f"cannot evaluate a {type(model).__name__}: give an ONNX model, a path, "
                         "a Simulator or a callable")
