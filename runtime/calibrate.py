"""Activation range calibration: one pass over the data for every tensor at once.

Dynamic fixed point (thesis 5.2.1), minifloat (6.3.1) and the range analysis of section 4.3 all
need the range of each layer's inputs and outputs on real data. Running the model once per layer
would multiply the cost by the number of layers, so :func:`calibrate` adds every wanted tensor as
an extra graph output of a copy of the model and runs the data through it once, in batches, while
a :class:`~ristretto_onnx.stats.RangeAccumulator` keeps running statistics per tensor. Memory
stays bounded by one batch plus a fixed-size histogram per tensor, however much data is streamed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.external import has_external, tensor_array
from ristretto_onnx.passes.graph import runtime_inputs as graph_runtime_inputs
from ristretto_onnx.passes.save import needs_external_data, save_model
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.stats import RangeAccumulator, RangeStats


def calibrate(
    model: ModelProto,
    tensors: Iterable[str],
    data,
    *,
    batch_size: int = 64,
    threads: int | None = None,
) -> dict[str, RangeStats]:
    """Range statistics of ``tensors`` over ``data``, in one streamed pass.

    ``data`` is a :class:`~ristretto_onnx.data.Dataset` (read with ``batches(batch_size)``), an
    array (split into batches), or an iterable of arrays / ``(x, labels)`` pairs / ``{input: x}``
    dicts. Tensors may be graph inputs, intermediate tensors, graph outputs or constants.
    """
    wanted = list(dict.fromkeys(tensors))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    runtime_inputs = graph_runtime_inputs(model)
    graph_outputs = [o.name for o in graph.output]
    produced = {o for n in graph.node for o in n.output if o}
    for t in wanted:
        if t not in produced and t not in runtime_inputs and t not in initializers:
            raise RistrettoError(f"cannot calibrate {t!r}: no such tensor in the model")
    accs = {t: RangeAccumulator() for t in wanted}
    const_tensors = [t for t in wanted if t in initializers and t not in produced]
    if const_tensors:
        by_name = {t.name: t for t in graph.initializer}
        for t in const_tensors:
            accs[t].update(tensor_array(by_name[t]))
    fed = [t for t in wanted if t in runtime_inputs]
    fetched = [t for t in wanted if t in produced]
    if fetched or fed:
        session, fetch_names = _session_with_outputs(model, fetched, graph_outputs, threads)
        batches = 0
        for feeds in _feeds(data, runtime_inputs, batch_size):
            batches += 1
            for t in fed:
                accs[t].update(feeds[t])
            if fetch_names:
                values = session.run(fetch_names, feeds)
                for name, value in zip(fetch_names, values):
                    accs[name].update(value)
        if not batches:
            raise RistrettoError("the calibration data is empty")
    return {t: accs[t].result() for t in wanted}


def _session_with_outputs(model: ModelProto, fetched: list[str], graph_outputs: list[str],
                          threads: int | None):
    """A session whose outputs include every tensor in ``fetched`` (on a copy of ``model``)."""
    probe = ModelProto()
    probe.CopyFrom(model)
    have = set(graph_outputs)
    for t in fetched:
        if t not in have:
            probe.graph.output.append(helper.make_tensor_value_info(t, TensorProto.UNDEFINED, None))
            have.add(t)
    # Untyped outputs are fine for onnxruntime; give float ones a type where shape inference
    # left one in value_info, so the check of output types does not trip on them.
    types = {vi.name: vi.type for vi in probe.graph.value_info}
    for out in probe.graph.output:
        if out.type.tensor_type.elem_type == TensorProto.UNDEFINED and out.name in types:
            out.type.CopyFrom(types[out.name])
    return session_any_size(probe, threads=threads), fetched


def session_any_size(model: ModelProto, *, threads: int | None = None):
    """``create_session`` for a proto of any size: above the 2 GB protobuf limit the model goes
    through a temporary file with external data (onnxruntime has read it once the session exists)."""
    if has_external(model) or not needs_external_data(model):  # weights on disk: read by onnxruntime
        return create_session(model, threads=threads)
    with tempfile.TemporaryDirectory(prefix="ristretto-session-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path, external_data=True)
        return create_session(path, threads=threads)


def _feeds(data, runtime_inputs: list[str], batch_size: int):
    """Yield ``{input_name: batch}`` dicts from whatever ``data`` is."""
    if hasattr(data, "batches"):
        source: Iterable = (x for x, _ in data.batches(batch_size))
    elif isinstance(data, np.ndarray):
        source = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    else:
        source = data
    for item in source:
        if isinstance(item, Mapping):
            yield {k: np.asarray(v) for k, v in item.items()}
            continue
        if isinstance(item, tuple):
            item = item[0]
        if len(runtime_inputs) != 1:
            raise RistrettoError(f"the model has {len(runtime_inputs)} runtime inputs "
                                 f"({', '.join(runtime_inputs)}); give the data as dicts per input")
        yield {runtime_inputs[0]: np.ascontiguousarray(item, dtype=np.float32)}

