"""The hardware view of a simulated model: what an accelerator built for it needs (``report``).

What FINN's and hls4ml's resource reports give for their flows, from the simulated model alone
(formats from its plan, shapes from ONNX shape inference, per image):

* per layer and tensor group: format, bits, fractional length or exponent window;
* multiply-accumulates bucketed by operand widths (layer input bits m x weight bits n); layers with
  power-of-two weights are shift-only (thesis ch. 7: a product with ``±2**e`` is a shift);
* multiplier area relative to a 32 x 32 multiplier, proportional to m * n (an array multiplier's
  partial products), and the accumulator / adder-tree width ``m + n + ceil(log2 K)`` that never
  overflows when adding K products (thesis 5.1; for shifts the product spans
  ``m + EMAX - EMIN`` bits);
* weight (and bias) and activation memory in bits and bytes against FP32, whether the weights
  and the largest activation buffer fit a given on-chip SRAM;
* the accuracy against the baseline and the tolerance, from ``metadata_props["ristretto.compress"]``.

Float groups count as 32-bit (an FP32 operand, a 32-bit word). For minifloat operands m * n uses
the total widths (an upper bound: the significand multiplier is (M+1) x (M+1)) and there is no
fixed accumulator width (the sum is floating point).

The report is a tree of frozen dataclasses; :mod:`ristretto_onnx.export.hw_report_render` renders
it as Markdown, JSON and a PNG chart, one function each.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, shape_inference

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.export.sim_graph import SimGraph, read_sim
from ristretto_onnx.formats import Fixed, Format, Minifloat, PerChannel, Pow2, UFixed
from ristretto_onnx.ops import is_quantize_sim
from ristretto_onnx.passes.graph import runtime_input_infos
from ristretto_onnx.passes.layers import Layer
from ristretto_onnx.passes.slots import get_metadata

FP32_BITS = 32
COMPRESS_KEY = "ristretto.compress"


@dataclass(frozen=True)
class TensorFormat:
    """One group of a layer: its format and how much storage it takes (per image)."""

    role: str
    tensor: str
    format: str          # the format's string form, or "float"
    kind: str            # fixed, minifloat, pow2, float (per-channel: "fixed per channel" ...)
    bits: int
    window: str          # fractional length(s) or exponent window
    elements: int

    @property
    def memory_bits(self) -> int:
        return self.elements * self.bits


@dataclass(frozen=True)
class LayerReport:
    name: str
    op_type: str
    kind: str
    tensors: tuple[TensorFormat, ...]
    macs: int
    accumulation_length: int      # K: products summed per output
    input_bits: int               # m
    weight_bits: int              # n
    shift_only: bool
    multiplier_area: float        # m * n / (32 * 32); 0 for shift-only layers
    accumulator_bits: int | None  # m + n + ceil(log2 K); None when the sum is floating point

    def tensor(self, role: str) -> TensorFormat | None:
        return next((t for t in self.tensors if t.role == role), None)

    @property
    def mac_bucket(self) -> str:
        return f"{self.input_bits}x{'shift' if self.shift_only else self.weight_bits}"

    def memory_bits(self, roles: tuple[str, ...]) -> int:
        return sum(t.memory_bits for t in self.tensors if t.role in roles)


@dataclass(frozen=True)
class Accuracy:
    metric: str
    baseline: float
    final: float
    tolerance: float
    scheme: str

    @property
    def drop(self) -> float:
        return self.baseline - self.final


@dataclass(frozen=True)
class HardwareReport:
    model: str
    layers: tuple[LayerReport, ...]
    accuracy: Accuracy | None
    sram_bytes: int | None

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def mac_buckets(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.mac_bucket] = out.get(layer.mac_bucket, 0) + layer.macs
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _sum(self, roles: tuple[str, ...]) -> int:
        return sum(layer.memory_bits(roles) for layer in self.layers)

    def _elements(self, roles: tuple[str, ...]) -> int:
        return sum(t.elements for layer in self.layers for t in layer.tensors if t.role in roles)

    @property
    def weight_bits(self) -> int:
        return self._sum(("weights",))

    @property
    def bias_bits(self) -> int:
        return self._sum(("bias",))

    @property
    def weight_bytes(self) -> float:
        """Weights only, packed (bits / 8), as compress's report counts them."""
        return self.weight_bits / 8

    @property
    def parameter_bytes(self) -> float:
        """Weights and biases, packed."""
        return (self.weight_bits + self.bias_bits) / 8

    @property
    def parameter_bytes_fp32(self) -> float:
        return self._elements(("weights", "bias")) * 4

    @property
    def weight_bytes_fp32(self) -> float:
        return self._elements(("weights",)) * 4

    @property
    def activation_bytes(self) -> float:
        """Every layer's input and output buffer, per image."""
        return self._sum(("inputs", "outputs")) / 8

    @property
    def activation_bytes_fp32(self) -> float:
        return self._elements(("inputs", "outputs")) * 4

    @property
    def largest_activation_buffer_bytes(self) -> float:
        return max((t.memory_bits / 8 for layer in self.layers for t in layer.tensors
                    if t.role in ("inputs", "outputs")), default=0.0)

    @property
    def multiplier_area(self) -> float:
        """MAC-weighted mean multiplier area relative to 32 x 32."""
        total = self.total_macs
        return sum(layer.macs * layer.multiplier_area for layer in self.layers) / total if total else 0.0

    @property
    def max_accumulator_bits(self) -> int | None:
        widths = [layer.accumulator_bits for layer in self.layers if layer.accumulator_bits is not None]
        return max(widths) if widths else None

    @property
    def sram_fit(self) -> dict[str, bool] | None:
        if self.sram_bytes is None:
            return None
        return {"weights": self.parameter_bytes <= self.sram_bytes,
                "largest_activation_buffer": self.largest_activation_buffer_bytes <= self.sram_bytes,
                "both": self.parameter_bytes + self.largest_activation_buffer_bytes <= self.sram_bytes}


def hardware_report(sim: ModelProto, *, sram_kib: float | None = None, name: str = "") -> HardwareReport:
    """The hardware report of a simulated model (see the module docstring)."""
    info = read_sim(sim)
    if info.layers is None:
        raise RistrettoError("the model records no layers (metadata ristretto.layers): the report "
                             "needs a model written by ristretto-onnx quantize or compress")
    shapes = _per_image_shapes(sim)
    layers = tuple(_layer_report(layer, info, shapes) for layer in info.layers)
    sram = None if sram_kib is None else int(round(sram_kib * 1024))
    return HardwareReport(name or sim.graph.name, layers, _accuracy(sim), sram)


def _layer_report(layer: Layer, info: SimGraph, shapes: dict[str, tuple[int, ...]]) -> LayerReport:
    weight_elems = int(np.prod(layer.weight_shape))
    tensors = []
    for group in layer.groups:
        if group.role == "weights":
            elements = weight_elems
        elif group.role == "bias":
            elements = int(np.prod(shapes.get(group.tensor, (layer.weight_shape[layer.out_channel_axis or 0],))))
        else:
            elements = _elements(shapes, group.tensor, layer.name)
        tensors.append(_tensor_format(group.role, group.tensor, info.group_format(group.id), elements))
    tensors = tuple(tensors)
    out_elems = _elements(shapes, layer.output, layer.name)
    in_elems = _elements(shapes, layer.input, layer.name)
    if layer.op_type == "ConvTranspose":  # each input value meets every weight of its group once
        k = max(1, weight_elems // layer.weight_shape[1])
        macs = in_elems * (weight_elems // layer.weight_shape[0])
    else:
        axis = layer.out_channel_axis if layer.out_channel_axis is not None else 0
        k = max(1, weight_elems // layer.weight_shape[axis])
        macs = out_elems * k
    w_fmt = info.group_format(f"{layer.name}/weights")
    x_fmt = info.group_format(f"{layer.name}/inputs")
    m, n = _bits(x_fmt), _bits(w_fmt)
    shift = _base(w_fmt) is Pow2
    return LayerReport(layer.name, layer.op_type, layer.kind, tensors, macs, k, m, n, shift,
                       0.0 if shift else m * n / (FP32_BITS * FP32_BITS),
                       _accumulator_bits(x_fmt, w_fmt, k))


def _base(fmt: Format | None):
    if fmt is None:
        return None
    return type(fmt.formats[0]) if isinstance(fmt, PerChannel) else type(fmt)


def _bits(fmt: Format | None) -> int:
    return FP32_BITS if fmt is None else fmt.bits


def _accumulator_bits(x_fmt, w_fmt, k: int) -> int | None:
    """Thesis 5.1: an m x n product has m + n bits; adding K of them needs ceil(log2 K) more.
    An unsigned m-bit input times a signed n-bit weight needs m + n bits too."""
    if _base(x_fmt) not in (Fixed, UFixed):
        return None
    grow = math.ceil(math.log2(k)) if k > 1 else 0
    if _base(w_fmt) is Fixed:
        return x_fmt.bits + w_fmt.bits + grow
    if _base(w_fmt) is Pow2:
        formats = w_fmt.formats if isinstance(w_fmt, PerChannel) else (w_fmt,)
        span = max(f.exp_max for f in formats) - min(f.exp_min for f in formats)
        return x_fmt.bits + span + grow
    return None


def _tensor_format(role: str, tensor: str, fmt: Format | None, elements: int) -> TensorFormat:
    if fmt is None:
        return TensorFormat(role, tensor, "float", "float", FP32_BITS, "-", elements)
    return TensorFormat(role, tensor, str(fmt), _kind(fmt), fmt.bits, _window(fmt), elements)


def _kind(fmt: Format) -> str:
    return f"{fmt.base_kind} per channel" if isinstance(fmt, PerChannel) else fmt.kind


def _window(fmt: Format) -> str:
    if isinstance(fmt, Fixed):
        return f"FL {fmt.frac_bits}"
    if isinstance(fmt, UFixed):
        return f"FL {fmt.frac_bits}, unsigned"
    if isinstance(fmt, Minifloat):
        return f"E{fmt.exp_bits} M{fmt.mant_bits}, 2^{fmt.emin}..2^{fmt.emax}"
    if isinstance(fmt, Pow2):
        return f"2^{fmt.exp_min}..2^{fmt.exp_max}"
    a, b = fmt.params()
    if isinstance(fmt.formats[0], Fixed):
        return f"FL {int(b.min())}..{int(b.max())}"
    return f"2^{int(a.min())}..2^{int(b.max())}"


def _elements(shapes: dict[str, tuple[int, ...]], tensor: str, layer: str) -> int:
    shape = shapes.get(tensor)
    if shape is None:
        raise RistrettoError(f"layer {layer!r}: shape inference gives no shape for {tensor!r}; "
                             "the report needs static shapes (apart from the batch size)")
    return int(np.prod(shape))


def _per_image_shapes(sim: ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor with a batch of one (QuantizeSim keeps its input's shape)."""
    model = ModelProto()
    model.CopyFrom(sim)
    for node in model.graph.node:
        if is_quantize_sim(node):
            node.domain, node.op_type, node.overload = "", "Identity", ""
            del node.attribute[:]
    del model.functions[:]
    for vi in runtime_input_infos(model):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > 1:
            dims[0].Clear()
            dims[0].dim_value = 1
    del model.graph.value_info[:]
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:  # onnx raises bare errors with C++ text
        raise RistrettoError(f"shape inference failed: {' '.join(str(e).split())[:300]}") from None
    g = inferred.graph
    shapes: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        t = vi.type.tensor_type
        dims = list(t.shape.dim) if t.HasField("shape") else None
        # The batch (dim 0) is 1 here; shape inference loses it through some ops (Pad).
        if dims and all(d.HasField("dim_value") for d in dims[1:]):
            shapes[vi.name] = (dims[0].dim_value or 1,) + tuple(d.dim_value for d in dims[1:])
    return shapes


def _accuracy(sim: ModelProto) -> Accuracy | None:
    text = get_metadata(sim, COMPRESS_KEY)
    if not text:
        return None
    try:
        d = json.loads(text)
        return Accuracy(str(d.get("metric", "top1")), float(d["baseline"]), float(d["final"]),
                        float(d["tolerance"]), str(d.get("scheme", "")))
    except (ValueError, KeyError, TypeError):
        return None
