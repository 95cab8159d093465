"""Run a simulated model under changing formats without paying for a new session each time.

A format search evaluates dozens of plans on the same model. Building an onnxruntime session
per plan means re-inlining, re-folding and re-optimizing the graph every time; the
:class:`Simulator` instead lowers each plan (:mod:`ristretto_onnx.runtime.lowering`) and keeps
the sessions of the graph *structures* it has seen:

* ``parametric=True`` (default): fixed-point activation formats are graph inputs, so plans
  that differ only in those share one session. Weights are quantized in numpy and baked into
  the session (a convolution with non-constant weights loses onnxruntime's NCHWc kernels, about
  4x slower on ResNet-20), so each distinct weight assignment has its own session; these are
  kept in a small LRU cache, sized by the memory a session holds
  (:mod:`ristretto_onnx.runtime.session_memory`).
* ``parametric=False``: every plan gets a fully constant graph, which onnxruntime can fuse
  further (scale and clip into the convolution) and which allows more exact rewrites; faster
  per image, at one session build (tens of milliseconds for ResNet-20) per new plan.

Either way the outputs are bit-identical to a plain onnxruntime session of the model with the
same formats written into its ``QuantizeSim`` attributes (:meth:`Simulator.model` returns that
model), which the tests check across format changes.

Formats are addressed by group id (``conv1/weights``) for models annotated by
:func:`~ristretto_onnx.passes.transforms.insert_quantizers.insert_quantizers`, and by ``QuantizeSim`` node
name for any model with such nodes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Format
from ristretto_onnx.ops import attach_functions, is_quantize_sim, node_format
from ristretto_onnx.passes.external import has_external, is_external, payload_size
from ristretto_onnx.passes.graph import copy_graph, export_model, import_graph, runtime_inputs
from ristretto_onnx.passes.load import read_model
from ristretto_onnx.passes.plan import format_of
from ristretto_onnx.passes.slots import ROUNDING_KEY, get_metadata, has_slots, read_plan, read_skipped_relus, read_slots
from ristretto_onnx.passes.transforms.set_formats import SetFormats, SetNodeFormats, set_formats
from ristretto_onnx.runtime.lowering import PARAM_PREFIX, Lowered, WeightCache, lower_graph
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.runtime.session_memory import resident_bytes, sessions_that_fit

FormatValue = Format | str | None


def load_model(model: ModelProto | str | os.PathLike) -> ModelProto:
    """A ModelProto from a proto or a path, weights in memory (one-line error for a missing or broken file)."""
    return read_model(model)


class Simulator:
    """Evaluate a model with QuantizeSim nodes (or quantizer slots) under changing formats.

    ``run(x)`` returns the first output for input ``x``; ``set_formats`` changes formats, which
    only costs a session when the graph structure is new (see the module docstring).
    """

    def __init__(
        self,
        model: ModelProto | str | os.PathLike,
        *,
        parametric: bool = True,
        providers: list[str] | None = None,
        threads: int | None = None,
        max_sessions: int = 8,
        blocked_layout: bool = True,
        spinning: bool = False,
    ) -> None:
        self._base = load_model(model)
        self.parametric = parametric
        self.providers = providers
        self.threads = threads
        self.blocked_layout = blocked_layout
        self.spinning = spinning
        self.max_sessions = max(1, int(max_sessions))
        self._sessions: OrderedDict[str, object] = OrderedDict()
        self._unmeasured: set[str] = set()  # sessions whose first run is still to come
        self.session_bytes = 0  # the most a session's first run grew this process (session_memory)
        self._weights = WeightCache()
        if has_external(self._base):  # weights on disk (passes.external): fed, one assignment held
            self._weights = WeightCache(max_bytes=_on_disk_bytes(self._base))
        self.sessions_built = 0
        self._lowered: Lowered | None = None
        self._template = None  # the annotated graph, imported once

        if has_slots(self._base):
            self._slots = read_slots(self._base)
            self._rounding = get_metadata(self._base, ROUNDING_KEY) or "nearest_even"
            self._formats: dict[str, Format | None] = dict(read_plan(self._base))
            self._alias = {s.node: s.group for s in self._slots}
        else:
            self._slots = None
            self._formats = {}
            self._roundings: dict[str, str] = {}
            for node in self._base.graph.node:
                if is_quantize_sim(node):
                    if not node.name:
                        raise RistrettoError("a QuantizeSim node has no name; name every quantizer "
                                             "so its format can be set")
                    fmt, rounding = node_format(node)
                    self._formats[node.name] = fmt
                    self._roundings[node.name] = rounding
            self._alias = {}
        self.input_names = runtime_inputs(self._base)
        if not self.input_names:
            raise RistrettoError("the model has no inputs to feed")

    @property
    def source(self) -> ModelProto:
        """The model the simulator was built from (its formats are the starting point)."""
        return self._base

    # ---- formats --------------------------------------------------------------------------

    @property
    def targets(self) -> tuple[str, ...]:
        """Names ``set_formats`` accepts: group ids (slot models) or QuantizeSim node names."""
        return tuple(self._formats)

    @property
    def formats(self) -> dict[str, Format | None]:
        return dict(self._formats)

    def set_formats(self, formats: Mapping[str, FormatValue], *, replace: bool = False) -> None:
        """Change the formats of the named groups/nodes (``None`` = float, identity).

        Names not mentioned keep their format, unless ``replace=True``, which makes them float
        (the meaning of an omitted group in a format plan).
        """
        new = {k: None for k in self._formats} if replace else dict(self._formats)
        for key, value in formats.items():
            name = self._alias.get(key, key)
            if name not in self._formats:
                known = next(iter(self._formats), "-")
                raise RistrettoError(f"unknown quantizer {key!r}: this model has {len(self._formats)} "
                                     f"quantizer(s), named like {known!r}")
            new[name] = format_of(value)
        if new != self._formats:
            self._formats = new
            self._lowered = None

    # ---- models ---------------------------------------------------------------------------

    def model(self) -> ModelProto:
        """The plain simulated model for the current formats (runs in any onnxruntime)."""
        if self._slots is not None:
            return set_formats(self._base, self._formats, rounding=self._rounding)
        return attach_functions(export_model(self._graph(), self._base))

    def _graph(self) -> gs.Graph:
        """A copy of the model's graph (imported once) with the current formats set."""
        if self._template is None:
            self._template = import_graph(self._base)
        graph = copy_graph(self._template)
        if self._slots is not None:
            SetFormats(self._slots, self._formats, self._rounding, read_skipped_relus(self._base))(graph)
        else:
            SetNodeFormats(self._formats, self._roundings)(graph)
        return graph

    def lowered(self) -> Lowered:
        """The lowered graph for the current formats (computed once per format change): one
        graph copy, formats set and lowered on it, one export."""
        if self._lowered is None:
            self._lowered = lower_graph(self._graph(), self._base, parametric=self.parametric,
                                        weights=self._weights)
        return self._lowered

    def session(self):
        """The onnxruntime session for the current formats, from the cache when possible."""
        lowered = self.lowered()
        session = self._sessions.get(lowered.key)
        if session is None:
            session = create_session(lowered.model, providers=self.providers, threads=self.threads,
                                     blocked_layout=self.blocked_layout, spinning=self.spinning)
            self.sessions_built += 1
            self._sessions[lowered.key] = session
            self._unmeasured.add(lowered.key)
            self._evict()
        else:
            self._sessions.move_to_end(lowered.key)
        return session

    # ---- running --------------------------------------------------------------------------

    def feeds(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        lowered = self.lowered()
        if isinstance(x, Mapping):
            feeds = dict(x)
        else:
            if len(self.input_names) != 1:
                raise RistrettoError(f"the model has {len(self.input_names)} inputs; pass a dict")
            feeds = {self.input_names[0]: x}
        feeds.update(lowered.feeds)
        return feeds

    def run_all(self, x: np.ndarray | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs for input ``x`` (an array for a single-input model, or a dict by name)."""
        session = self.session()
        key = self.lowered().key
        if key not in self._unmeasured:
            return session.run(None, self.feeds(x))
        before = resident_bytes()
        out = session.run(None, self.feeds(x))
        after = resident_bytes()
        self._unmeasured.discard(key)
        if before is not None and after is not None and after - before > self.session_bytes:
            self.session_bytes = after - before
            self._evict()
        return out

    def _evict(self) -> None:
        """Drop the least recently used sessions beyond what fits (runtime.session_memory)."""
        keep = sessions_that_fit(self.session_bytes, self.max_sessions)
        while len(self._sessions) > keep:
            key, _ = self._sessions.popitem(last=False)
            self._unmeasured.discard(key)

    def run(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """The first output for input ``x``."""
        return self.run_all(x)[0]

    def __call__(self, x):
        return self.run(x)


def _on_disk_bytes(model: ModelProto) -> int:
    return sum(payload_size(t) for t in model.graph.initializer if is_external(t))


def is_param_input(name: str) -> bool:
    return name.startswith(PARAM_PREFIX)
