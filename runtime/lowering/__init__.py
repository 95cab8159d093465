"""Compile a simulated model into the fastest graph that computes exactly the same numbers.

The reference is the simulated model itself run by a plain onnxruntime session: every
``QuantizeSim`` node runs its standard-op function body (:mod:`ristretto_onnx.ops`). The lowered
graph must give bit-identical outputs, signed zeros included; what changes is how much work
onnxruntime does per image. The lowering is a pipeline on the graph layer
(:mod:`ristretto_onnx.passes.graph`): Constant nodes become constants, float slots are
bypassed, quantizers are lowered (:mod:`.quantizers`), then the exact rewrite rules run
(:mod:`.rules`) and the scalar parameters are published (:mod:`.params`).

With ``parametric=True`` the fixed-point scalars are graph inputs fed at every run, so changing
a fixed-point activation format never rebuilds the session; otherwise they are constants, which
onnxruntime folds into the convolution (the scale) and its activation (the clip). NaN inputs are
outside the contract (the order of Clip and Round may decide whether a NaN survives).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto

from ristretto_onnx.ops import attach_functions
from ristretto_onnx.passes.contract import run_pipeline
from ristretto_onnx.passes.external import has_external
from ristretto_onnx.passes.graph import export_model, external_proto, import_graph
from ristretto_onnx.passes.transforms.set_formats import is_quantizer
from ristretto_onnx.runtime.lowering.params import PARAM_PREFIX, Params
from ristretto_onnx.runtime.lowering.quantizers import (
    ConstantsToInitializers, DropIdentities, LowerQuantizers, WeightCache,
)
from ristretto_onnx.runtime.lowering.rules import STRUCTURAL_RULES, VALUE_RULES, RewriteRules

__all__ = ["PARAM_PREFIX", "Lowered", "WeightCache", "lower", "lower_graph"]


@dataclass(frozen=True, eq=False)
class Lowered:
    """A lowered graph, the scalars to feed it (parametric mode) and a key of its structure.

    Two lowerings with the same ``key`` can share one onnxruntime session: they differ at most in
    the values of ``feeds``.
    """

    model: ModelProto = field(repr=False)
    feeds: dict[str, np.ndarray] = field(repr=False)
    key: str


def lower_graph(graph: gs.Graph, source: ModelProto, *, parametric: bool = True,
                weights: WeightCache | None = None) -> Lowered:
    """Lower the simulated ``graph`` (imported from, or derived from, ``source``) and export it."""
    params = Params(graph, parametric)
    # Rules that depend on format values would multiply the structures (sessions) in parametric mode.
    rules = STRUCTURAL_RULES if parametric else STRUCTURAL_RULES + VALUE_RULES
    run_pipeline(graph, [
        ConstantsToInitializers(),
        DropIdentities(),
        LowerQuantizers(params, weights or WeightCache()),
        RewriteRules(params, rules),
    ])
    feeds = params.publish()
    if has_external(source):  # weights on disk (passes.external): see _weights_as_inputs
        feeds.update(_weights_as_inputs(graph, weights or WeightCache()))
    out = export_model(graph, source, keep_order=False)
    del out.metadata_props[:]  # the plan is recorded there; it must not split the cache
    del out.functions[:]
    if any(is_quantizer(n) for n in graph.nodes):
        out = attach_functions(out)
    key = hashlib.sha1(out.SerializeToString()).hexdigest()
    return Lowered(out, feeds, key)


#: Constants at least this large are fed at run time (models with weights on disk).
FED_MIN_BYTES = 1 << 20


def _weights_as_inputs(graph: gs.Graph, weights: WeightCache) -> dict[str, np.ndarray]:
    """Turn the large weights of ``graph`` (quantized, or float and still on disk) into graph
    inputs fed at run time.

    onnxruntime copies every initializer into its session, and a model over 2 GB cannot afford
    a second copy of its weights (issue 10, Deliver 8): a fed array is read in place, and the
    :class:`WeightCache` holds about one assignment of the weights. Sessions then depend on the
    structure only and hold no weights.
    """
    fed: dict[str, np.ndarray] = {}
    for name, t in graph.tensors().items():
        if not isinstance(t, gs.Constant):
            continue
        if isinstance(t._values, gs.ir.tensor.LazyValues):
            if external_proto(t) is None or t._values.nbytes < FED_MIN_BYTES:
                continue  # small ones onnxruntime reads from the file itself
            value = weights.get_float(t)
        else:
            value = t.values
            if not isinstance(value, np.ndarray) or value.nbytes < FED_MIN_BYTES:
                continue
        fed[name] = np.ascontiguousarray(value)
        t.to_variable(dtype=value.dtype, shape=list(value.shape))
        if not hasattr(t, "type"):  # imported constants never were variables
            t.type = "tensor_type"
        if not any(i is t for i in graph.inputs):  # (an initializer may double as a graph input)
            graph.inputs.append(t)
    return fed

def lower(model: ModelProto, *, parametric: bool = True, weights: WeightCache | None = None) -> Lowered:
    """The exact, faster equivalent of the simulated ``model`` (see the module docstring)."""
    return lower_graph(import_graph(model), model, parametric=parametric, weights=weights)
