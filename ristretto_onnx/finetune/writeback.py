"""Write fine-tuned shadow weights back into the ONNX model, by initializer name (issue 12).

Only the initializers' values change: names, shapes, dtypes, their order, every node and every
``QuantizeSim`` format stay as they were, so the written model is the simulated model of the
same plan, whose weight quantizers now round the fine-tuned shadow weights (half to even).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from onnx import ModelProto, TensorProto, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.slots import set_metadata

#: ``metadata_props`` key of the fine-tuning summary in a fine-tuned model.
FINETUNE_KEY = "ristretto.finetune"


def write_back(model: ModelProto, weights: Mapping[str, np.ndarray],
               summary: Mapping | None = None) -> ModelProto:
    """A copy of ``model`` whose float initializers named in ``weights`` hold the new values."""
    out = ModelProto()
    out.CopyFrom(model)
    todo = dict(weights)
    for i, t in enumerate(out.graph.initializer):
        if t.name not in todo:
            continue
        value = np.ascontiguousarray(todo.pop(t.name), dtype=np.float32)
        if t.data_type != TensorProto.FLOAT or tuple(t.dims) != value.shape:
            raise RistrettoError(f"initializer {t.name!r} is {tuple(t.dims)} of type {t.data_type}; "
                                 f"cannot write a float32 {value.shape} array into it")
        new = numpy_helper.from_array(value, t.name)
        if t.doc_string:
            new.doc_string = t.doc_string
        out.graph.initializer[i].CopyFrom(new)
    if todo:
        raise RistrettoError(f"the model has no initializer named {next(iter(todo))!r}")
    if summary is not None:
        set_metadata(out, FINETUNE_KEY, json.dumps(dict(summary), separators=(",", ":"), sort_keys=True))
    return out
