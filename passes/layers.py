"""The data model of the simulated data path: quantizable layers and their number groups.

The thesis (fig. 2.9/2.10, ch. 5.2) splits every convolutional or fully connected layer into
groups of numbers that share one format: the layer ``inputs``, the ``weights`` and the layer
``outputs`` (plus the ``bias``, kept in float by default). Table 5.1 further splits layers by
*kind*: ``conv`` (Conv, ConvTranspose) and ``fc`` (Gemm, MatMul).

A :class:`Group` is named by a stable string id ``<layer>/<role>`` (``conv1/weights``); plans,
reports and the annotated model all key on that id, so it is the one thing other modules need to
agree on. Layer names may contain ``/`` themselves; the role is always the last component.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from ristretto_onnx.errors import RistrettoError

Kind = Literal["conv", "fc"]
Role = Literal["inputs", "weights", "outputs", "bias"]

#: Group roles in data-path order.
ROLES: tuple[Role, ...] = ("inputs", "weights", "bias", "outputs")
#: Roles whose numbers are activations measured on data (the others come from initializers).
ACTIVATION_ROLES: frozenset[str] = frozenset({"inputs", "outputs"})
#: Roles whose numbers are parameters stored in the model.
PARAMETER_ROLES: frozenset[str] = frozenset({"weights", "bias"})

KIND_OF_OP: dict[str, Kind] = {"Conv": "conv", "ConvTranspose": "conv", "Gemm": "fc", "MatMul": "fc"}


@dataclass(frozen=True)
class Layer:
    """One multiply-accumulate layer of the graph, as the data path sees it.

    ``input``, ``weight``, ``bias`` and ``output`` are tensor names in the float model. When a
    separate ``Add`` of a per-channel constant follows the MAC node (``MatMul`` + ``Add``), that
    constant is the bias and the layer output is the ``Add``'s output: the thesis adds the bias
    before the output is quantized. ``node_output`` (the MAC node's first output) identifies the
    MAC node even when the graph's nodes are unnamed; ``bias_node_output`` likewise the ``Add``.
    ``out_channel_axis`` is the weight axis of the output channels (``None`` where a per-channel
    format would not map to one axis, e.g. grouped ConvTranspose).
    """

    name: str
    op_type: str
    kind: Kind
    node: str
    node_output: str
    input: str
    weight: str
    bias: str | None
    output: str
    weight_shape: tuple[int, ...]
    out_channel_axis: int | None
    bias_node_output: str | None = None

    def tensor(self, role: Role) -> str | None:
        return {"inputs": self.input, "weights": self.weight, "bias": self.bias,
                "outputs": self.output}[role]

    @property
    def groups(self) -> tuple[Group, ...]:
        return tuple(Group(self.name, role, self.kind, t)
                     for role in ROLES if (t := self.tensor(role)) is not None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weight_shape"] = list(self.weight_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Layer:
        d = dict(d)
        d["weight_shape"] = tuple(d["weight_shape"])
        return cls(**d)


@dataclass(frozen=True)
class Group:
    """The numbers of one layer that share a format: its inputs, weights, bias or outputs."""

    layer: str
    role: Role
    kind: Kind
    tensor: str

    @property
    def id(self) -> str:
        return group_id(self.layer, self.role)

    def __str__(self) -> str:
        return self.id


def group_id(layer: str, role: str) -> str:
    return f"{layer}/{role}"


def split_group_id(gid: str) -> tuple[str, Role]:
    """``("conv1", "weights")`` from ``"conv1/weights"``; a one-line error for anything else."""
    layer, sep, role = gid.rpartition("/")
    if not sep or not layer or role not in ROLES:
        raise RistrettoError(f"bad group id {gid!r}: expected LAYER/ROLE with ROLE one of "
                             f"{', '.join(ROLES)}")
    return layer, role  # type: ignore[return-value]


@dataclass(frozen=True)
class SkippedNode:
    """A Conv/Gemm/MatMul that is not a quantizable layer, and why (reported, not an error)."""

    node: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class LayerSet:
    """The quantizable layers of a model in graph order, plus the MAC nodes left alone."""

    layers: tuple[Layer, ...]
    skipped: tuple[SkippedNode, ...] = ()

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def groups(self) -> tuple[Group, ...]:
        return tuple(g for layer in self.layers for g in layer.groups)

    @property
    def group_ids(self) -> tuple[str, ...]:
        return tuple(g.id for g in self.groups)

    def group(self, gid: str) -> Group:
        layer, role = split_group_id(gid)
        for g in self[layer].groups:
            if g.role == role:
                return g
        raise KeyError(gid)

    def select(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> tuple[Layer, ...]:
        """Layers whose name matches any ``include`` regex (all if none) and no ``exclude`` one.

        Patterns use :func:`re.search`; a bad pattern or an ``include`` list that matches nothing
        is a :class:`RistrettoError` (a typo should not silently quantize nothing).
        """
        inc = [_compile(p, "--layers") for p in include]
        exc = [_compile(p, "--exclude") for p in exclude]
        chosen = tuple(layer for layer in self.layers
                       if (not inc or any(p.search(layer.name) for p in inc))
                       and not any(p.search(layer.name) for p in exc))
        if include and not any(any(p.search(layer.name) for p in inc) for layer in self.layers):
            raise RistrettoError(f"no layer matches {', '.join(include)!s}; layers are: "
                                 f"{_preview(self.names)}")
        return chosen

    def to_json(self) -> str:
        return json.dumps({"layers": [layer.to_dict() for layer in self.layers],
                           "skipped": [asdict(s) for s in self.skipped]}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LayerSet:
        d = json.loads(text)
        return cls(tuple(Layer.from_dict(x) for x in d["layers"]),
                   tuple(SkippedNode(**s) for s in d.get("skipped", [])))


def _compile(pattern: str, option: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise RistrettoError(f"{option}: bad regular expression {pattern!r}: {e}") from None


def _preview(names: Iterable[str], n: int = 8) -> str:
    names = list(names)
    more = f" ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
