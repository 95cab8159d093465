"""The pass pipeline, top to bottom: load -> fold BN -> find layers -> insert slots -> set formats.

:func:`prepare` runs the steps that depend only on the model, once: it imports the loaded model
into the graph layer once, runs :func:`float_passes`, exports the FP32 reference, finds the
layers (a read-only analysis) and exports the annotated model with one slot per group.
:func:`simulate` applies a format plan to the prepared model and is cheap enough to call in a
search loop (it rewrites the slot nodes of a copy, nothing else)::

    prepared = prepare("resnet20.onnx")                 # validated, BN folded, slots inserted
    model = simulate(prepared, {"conv1/weights": Fixed(8, 7), ...})
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from onnx import ModelProto

from ristretto_onnx.passes.analysis.find_layers import find_layers
from ristretto_onnx.passes.contract import Transformation, run_pipeline
from ristretto_onnx.passes.graph import export_model, import_graph
from ristretto_onnx.passes.layers import LayerSet
from ristretto_onnx.passes.load import load_model
from ristretto_onnx.passes.transforms.fold_batchnorm import FoldBatchNorm
from ristretto_onnx.passes.transforms.insert_quantizers import annotate
from ristretto_onnx.passes.transforms.set_formats import set_formats


def float_passes(fold_bn: bool = True) -> list[Transformation]:
    """The transformations that make the FP32 reference from the loaded model, in order."""
    return [FoldBatchNorm()] if fold_bn else []


@dataclass(frozen=True, eq=False)
class Prepared:
    """A model ready for format plans.

    ``float_model`` is the FP32 reference the plans are chosen for (validated, BN folded when
    asked): calibrate and score against it. ``annotated`` is the same graph with one float slot
    per group; ``layers`` lists the quantizable layers and their groups.
    """

    float_model: ModelProto = field(repr=False)
    annotated: ModelProto = field(repr=False)
    layers: LayerSet


def prepare(source: str | os.PathLike | ModelProto, *, fold_bn: bool = True) -> Prepared:
    """Load ``source`` and run every step that does not depend on a format plan (see above)."""
    loaded = load_model(source)
    graph = import_graph(loaded)
    changed = run_pipeline(graph, float_passes(fold_bn)).changed
    model = export_model(graph, loaded) if changed else loaded
    layers = find_layers(graph)
    annotated = annotate(graph, model, layers)
    return Prepared(model, annotated, layers)


def simulate(prepared: Prepared | ModelProto, plan: Mapping[str, object], *,
             rounding: str = "nearest_even") -> ModelProto:
    """The simulated reduced-precision model for ``plan`` (runs in plain onnxruntime)."""
    annotated = prepared.annotated if isinstance(prepared, Prepared) else prepared
    return set_formats(annotated, plan, rounding=rounding)
