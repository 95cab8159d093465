"""Adaptive weight rounding: each weight's rounding chosen for the layer's output, not alone.

Weights are constants, so nothing forces each one to its nearest grid point: rounding one weight
up and a correlated neighbour down can cancel in the layer's output ``W x``. This module rounds
a layer's weights on the format's own grid (fixed point / dynamic fixed point, one format per
tensor or per output channel, thesis ch. 4-5) so that the output error on the calibration
inputs, ``sum_x |(W_q - W) x|^2 = tr((W_q - W) H (W_q - W)^T)`` with ``H = sum x x^T``, is small,
by error feedback (OPTQ/GPTQ, Frantar et al. 2023): the input columns of ``W`` are quantized one
at a time (largest ``H_ii`` first), and each column's rounding error is spread over the columns
not yet quantized through the upper Cholesky factor of ``(H + damp I)^-1``, which is the least
squares update of the remaining weights. Clipping happens in the format's quantizer itself, so
every weight ends on the grid and in range: the weight ``QuantizeSim`` left in the simulated
model is an exact no-op on the result.

``H`` comes from each layer's input as the simulated model delivers it on calibration images
(after the input's quantizer, the layers upstream quantized with nearest rounding: what the
layer will multiply; one streamed pass over all layers, :func:`ristretto_onnx.moments.fetched`).
On LeNet 4/4/4 this halves the calibration KL where the FP32 model's inputs lower it by a
quarter (docs/ACCURACY.md). For a convolution the rows are
im2col patches at a seeded sample of output positions, per group (a depthwise convolution has
one ``kh*kw`` Hessian per channel); Gemm and MatMul take the input rows as they are. Power-of-two
and minifloat weights keep round-to-nearest (their grids are not uniform), as do weights kept on
disk (passes.external) and weights shared by several layers.

Written here in numpy: the maintained implementations (the GPTQ reference code, AutoGPTQ,
Intel Neural Compressor's weight-only GPTQ) work on PyTorch modules or onnx MatMul weights with
arbitrary float scales; none rounds ONNX Conv weights onto power-of-two-step grids chosen
elsewhere, per tensor or per channel, which is what the plan fixes before this step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from onnx import ModelProto

from ristretto_onnx.formats import Fixed, PerChannel
from ristretto_onnx.moments import fetched
from ristretto_onnx.passes.bias_correction import mac_node
from ristretto_onnx.passes.graph import as_graph, constant_value, export_model, external_proto, import_graph
from ristretto_onnx.passes.layers import Layer, group_id

#: Damping of ``H``, a fraction of its mean diagonal (as GPTQ).
DAMP = 0.01


def rounds_adaptively(fmt) -> bool:
    """Uniform grids this rounds on: fixed point per tensor or per channel."""
    return isinstance(fmt, Fixed) or (isinstance(fmt, PerChannel) and isinstance(fmt.formats[0], Fixed))


def _matrix_view(layer: Layer, attrs: Mapping, w: np.ndarray):
    """(rows = output channels, columns = inputs) view of ``w`` and its inverse, or None."""
    if layer.op_type == "Conv" and w.ndim >= 3:
        return w.reshape(w.shape[0], -1), lambda m: m.reshape(w.shape)
    if layer.op_type == "Gemm" and w.ndim == 2 and not attrs.get("transA", 0):
        if attrs.get("transB", 0):
            return w, lambda m: m
        return w.T, lambda m: m.T
    if layer.op_type == "MatMul" and w.ndim == 2:
        return w.T, lambda m: m.T
    return None


def _out_axis(layer: Layer, attrs: Mapping, ndim: int) -> int:
    if layer.op_type == "Conv" or (layer.op_type == "Gemm" and attrs.get("transB", 0)):
        return 0
    return ndim - 1


def _row_quantizer(fmt, rows: np.ndarray, rounding: str):
    """Quantizer of one weight column (one value per output channel in ``rows``)."""
    if isinstance(fmt, PerChannel):
        sub = PerChannel(tuple(fmt.formats[r] for r in rows), axis=0)
        return lambda col: sub.quantize(col[:, None], rounding)[:, 0].astype(np.float64)
    return lambda col: fmt.quantize(col, rounding).astype(np.float64)


def round_adaptively(w: np.ndarray, hessian: np.ndarray, quantize_column, *, damp: float = DAMP) -> np.ndarray:
    """``w`` (rows x columns) rounded column by column with error feedback through ``hessian``
    (columns x columns, ``sum x x^T``); ``quantize_column`` maps one column to the grid."""
    w = np.array(w, np.float64)
    h = np.array(hessian, np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[:, order], h[np.ix_(order, order)]
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: (H + damp I)^-1 = u^T u
    q = np.empty_like(w)
    for i in range(w.shape[1]):
        q[:, i] = quantize_column(w[:, i])
        err = (w[:, i] - q[:, i]) / u[i, i]
        w[:, i + 1:] -= np.outer(err, u[i, i + 1:])
    out = np.empty_like(q)
    out[:, order] = q
    return out


def _patches(x: np.ndarray, attrs: Mapping, kernel: tuple[int, int], per_image: int,
             rng: np.random.Generator) -> np.ndarray:
    """im2col rows (``C * kh * kw`` each) of a 2-D convolution's input ``x`` (N, C, H, W) at
    ``per_image`` seeded output positions per image (all when there are fewer)."""
    kh, kw = kernel
    dh, dw = (list(attrs.get("dilations", [1, 1])) + [1, 1])[:2]
    sh, sw = (list(attrs.get("strides", [1, 1])) + [1, 1])[:2]
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    pads = list(attrs.get("pads", [0, 0, 0, 0])) or [0, 0, 0, 0]
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (-(-n // s) - 1) * s + e - n) for n, s, e in zip(x.shape[2:], (sh, sw), (eh, ew))]
        first = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        pads = first + [t - f for t, f in zip(total, first)]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh, ow = (xp.shape[2] - eh) // sh + 1, (xp.shape[3] - ew) // sw + 1
    n = x.shape[0]
    m = min(per_image, oh * ow)
    pos = np.stack([rng.choice(oh * ow, m, replace=False) for _ in range(n)])  # (n, m)
    img = np.repeat(np.arange(n), m)
    r, c = (pos // ow).ravel() * sh, (pos % ow).ravel() * sw
    ii = r[:, None] + np.arange(kh)[None, :] * dh  # (n*m, kh)
    jj = c[:, None] + np.arange(kw)[None, :] * dw  # (n*m, kw)
    p = xp[img[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
           ii[:, None, :, None], jj[:, None, None, :]]  # (n*m, C, kh, kw)
    return p


def layer_hessians(model: ModelProto, layers: Iterable[Layer], batches: Iterable[np.ndarray], *,
                   rows: int = 32768, images: int | None = None, seed: int = 0,
                   threads: int | None = None) -> dict[str, list[np.ndarray]]:
    """``{layer name: [H per group]}``: ``sum x x^T`` of each layer's input rows in ``model``
    (the FP32 model, or a simulated one: then the input as its quantizer leaves it;
    convolutions: about ``rows`` im2col rows over the ``images`` calibration images, the same
    seeded positions for every run)."""
    graph = as_graph(model)
    tensors = graph.tensors()
    todo = []
    for layer in layers:
        node = mac_node(graph, tensors, layer)
        if layer.op_type == "Conv" and len(layer.weight_shape) != 4:
            continue
        if layer.op_type in ("Conv", "Gemm", "MatMul"):
            todo.append((layer, node.attrs, node.inputs[0].name))
    rng = np.random.default_rng(seed)
    per_image = max(1, -(-rows // max(1, images or 256)))
    out: dict[str, list[np.ndarray]] = {}
    for values in fetched(model, [t for _, _, t in todo], batches, threads=threads):
        for layer, attrs, name in todo:
            v = values[name]  # float32; rows go to float64 (exactly) once sampled, not the whole batch
            if layer.op_type == "Conv":
                groups = int(attrs.get("group", 1))
                p = _patches(v, attrs, tuple(layer.weight_shape[2:]), per_image, rng).astype(np.float64)
                cg = p.shape[1] // groups
                parts = [p[:, g * cg:(g + 1) * cg].reshape(len(p), -1) for g in range(groups)]
            else:
                parts = [np.asarray(v, np.float64).reshape(-1, v.shape[-1])]
            sums = [a.T @ a for a in parts]
            out[layer.name] = sums if layer.name not in out else [s + t for s, t in zip(out[layer.name], sums)]
    return out


def adaptive_weights(model: ModelProto, layers: Iterable[Layer], plan: Mapping[str, object],
                     hessians: Mapping[str, list[np.ndarray]], *, rounding: str = "nearest_even",
                     damp: float = DAMP) -> dict[str, np.ndarray]:
    """``{layer name: weights on the plan's grid}`` (float32, the weight tensor's shape) for the
    layers whose weight format is fixed point (per tensor or per channel) and whose Hessian is
    known; the others are left to the plan's own rounding."""
    graph = as_graph(model)
    tensors = graph.tensors()
    layers = list(layers)
    shared = {t for t in (l.weight for l in layers) if sum(l.weight == t for l in layers) > 1}
    out: dict[str, np.ndarray] = {}
    for layer in layers:
        fmt = plan.get(group_id(layer.name, "weights"))
        weight = tensors.get(layer.weight)
        if weight is None or external_proto(weight) is not None or layer.weight in shared:
            continue  # weights kept on disk (passes.external) or shared by layers keep the plan's rounding
        w = constant_value(weight)
        if not rounds_adaptively(fmt) or w is None or layer.name not in hessians:
            continue
        attrs = mac_node(graph, tensors, layer).attrs
        view = _matrix_view(layer, attrs, np.asarray(w, np.float64))
        if view is None:
            continue
        if isinstance(fmt, PerChannel) and fmt.axis % w.ndim != _out_axis(layer, attrs, w.ndim):
            continue
        mat, back = view
        hs = hessians[layer.name]
        og = mat.shape[0] // len(hs)
        q = np.empty_like(mat)
        for g, h in enumerate(hs):
            rows = np.arange(g * og, (g + 1) * og)
            q[rows] = round_adaptively(mat[rows], h, _row_quantizer(fmt, rows, rounding), damp=damp)
        out[layer.name] = np.ascontiguousarray(back(q)).astype(np.float32)
    return out


def with_weights(model: ModelProto, layers: Iterable[Layer], weights: Mapping[str, np.ndarray]) -> ModelProto:
    """A copy of ``model`` (float or annotated: the same tensor names) with the layers' weight
    constants replaced by ``weights[layer name]``."""
    graph = import_graph(model)
    tensors = graph.tensors()
    for layer in layers:
        if layer.name in weights:
            tensors[layer.weight].values = weights[layer.name]
    return export_model(graph, model)
