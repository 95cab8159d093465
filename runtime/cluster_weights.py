"""What the Ray actors get of a model: its graph, and its weights on disk as references, never bytes.

A model over 2 GB keeps its weights in an external-data file, and the pipeline leaves them there
(:mod:`ristretto_onnx.passes.external`: every proto refers to the file by a path relative to the
file system's root). The actors of :mod:`ristretto_onnx.runtime.cluster` get such a proto as is:
each Simulator and session reads the weights from the file itself (feeding them, as the local
Simulator does for weights on disk), so the object store carries a few kilobytes per model, not
gigabytes. The file must be at the same path on every node (a shared file system), as the data is.

Weights such a model holds only in memory, because a pass computed them (folded batch
normalization, thesis 9.1, or equalized scales), are written once to a scratch file and referred
to in the same way (:func:`shipped`). The scratch folder is ``RISTRETTO_RAY_SCRATCH`` (shared by
the nodes on a multi-node cluster) or the system's temporary folder; the file is removed when the
runner goes. A model held wholly in memory (under 2 GB) is shipped as bytes, once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from onnx import ModelProto, TensorProto, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.external import ROOT, has_external, is_external
from ristretto_onnx.passes.load import read_model
from ristretto_onnx.passes.save import _copy_fields, _external_entry, _pad

#: In-memory initializers of a model with weights on disk at least this large go to the scratch file.
SPILL_MIN_BYTES = 1 << 20
#: Environment variable naming the scratch folder (shared by every node of a multi-node cluster).
SCRATCH_ENV = "RISTRETTO_RAY_SCRATCH"


def read_light(model) -> ModelProto:
    """A model given by path with its external weights left in their file (references relative to
    :data:`~ristretto_onnx.passes.external.ROOT`); a ModelProto as it is."""
    return read_model(model, weights_in_memory=False)


class Spill:
    """The scratch file of one runner: in-memory weights of models with weights on disk."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._offset = 0
        self._written: dict[tuple[str, bytes], tuple[int, int]] = {}  # (name, digest) -> (offset, length)

    def _write(self, name: str, raw: bytes) -> tuple[int, int]:
        key = (name, hashlib.sha256(raw).digest())
        if key in self._written:  # the FP32 and the annotated model share folded weights
            return self._written[key]
        if self.path is None:
            folder = os.environ.get(SCRATCH_ENV) or None
            try:
                fd, tmp = tempfile.mkstemp(prefix="ristretto-ray-", suffix=".data", dir=folder)
            except OSError as e:
                raise RistrettoError(f"cannot write the actors' weight file in {folder or tempfile.gettempdir()}: "
                                     f"{e.strerror or e}") from None
            os.close(fd)
            self.path = Path(tmp).resolve()
        with open(self.path, "ab") as f:
            self._offset += _pad(f, self._offset)
            f.write(raw)
        where = self._written[key] = (self._offset, len(raw))
        self._offset += len(raw)
        return where

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path, self._offset, self._written = None, 0, {}


def shipped(model: ModelProto, spill: Spill) -> bytes:
    """``model`` serialized for the actors: weights on disk stay references; when there are such,
    in-memory weights of :data:`SPILL_MIN_BYTES` and more are written to ``spill`` and referred to."""
    if not has_external(model):
        return model.SerializeToString()
    light = ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    for t in model.graph.initializer:
        if is_external(t) or t.data_type == TensorProto.STRING or t.ByteSize() < SPILL_MIN_BYTES:
            light.graph.initializer.add().CopyFrom(t)
            continue
        # (as passes.save writes them: little-endian on every supported host)
        raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
        offset, length = spill._write(t.name, raw)
        _external_entry(light.graph.initializer.add(), t, os.path.relpath(spill.path, ROOT), offset, length)
    return light.SerializeToString()
