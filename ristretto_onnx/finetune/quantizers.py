"""The number formats of :mod:`ristretto_onnx.formats` on torch tensors, for fine-tuning.

Thesis section 9.3 (fig. 9.2): every batch, the full-precision shadow weights are quantized to
their group's format with **stochastic rounding** and the forward pass uses the discrete values;
the gradient with respect to the discrete weights is applied to the shadow weights unchanged
(straight through). Scoring uses round-half-to-even, as inference does.

Round-half-to-even here is bit-exact with the numpy reference :func:`ristretto_onnx.formats.quantize`
(and so with the ``QuantizeSim`` function bodies): fixed point computes in float32, where scaling
by a power of two is exact and ``torch.round`` is half-to-even; minifloat and power-of-two mirror
the reference in float64, with powers of two built from their bit patterns (no ``pow``).

Stochastic rounding draws its uniform numbers from a seeded CPU :class:`torch.Generator` and moves
them to the tensor's device, so a run on the GPU rounds exactly as the same run on the CPU.
"""

from __future__ import annotations

import numpy as np

from ristretto_onnx.finetune.torch_dep import require_torch
from ristretto_onnx.formats import Fixed, Format, Minifloat, PerChannel, Pow2, UFixed, parse_format

torch = require_torch()

_SQRT2 = float(np.sqrt(2.0))


def _pow2_f64(n: "torch.Tensor") -> "torch.Tensor":
    """2**n in float64 for integer ``n`` in [-1022, 1023], exactly (built from the bit pattern)."""
    return ((n.to(torch.int64) + 1023) << 52).view(torch.float64)


def _uniform(shape, like: "torch.Tensor", generator, dtype=torch.float32) -> "torch.Tensor":
    u = torch.rand(shape, generator=generator, dtype=dtype)
    return u.to(like.device, non_blocking=True) if like.device.type != "cpu" else u


def _round(v: "torch.Tensor", rounding: str, generator) -> "torch.Tensor":
    """Half to even, or stochastically: ``floor(v) + (u < v - floor(v))`` (exact, unbiased)."""
    if rounding == "nearest_even":
        return torch.round(v)
    lo = torch.floor(v)
    return lo + (_uniform(v.shape, v, generator, v.dtype) < (v - lo)).to(v.dtype)


class TorchFormat:
    """One format, ready to quantize torch tensors; per-channel constants cached per device."""

    def __init__(self, fmt: Format | str) -> None:
        self.format = parse_format(fmt)
        self._const: dict[tuple, tuple] = {}

    def __repr__(self) -> str:
        return f"TorchFormat({self.format})"

    def _channel_params(self, x: "torch.Tensor"):
        fmt = self.format
        assert isinstance(fmt, PerChannel)
        key = (x.device, x.dim())
        if key not in self._const:
            shape = fmt.broadcast_shape(x.dim())
            a, b = (p.reshape(shape) for p in fmt.params())
            if isinstance(fmt.formats[0], Fixed):
                scale = torch.as_tensor(np.ldexp(1.0, b).astype(np.float32), device=x.device)
                inv = torch.as_tensor(np.ldexp(1.0, -b).astype(np.float32), device=x.device)
                self._const[key] = (scale, inv)
            else:
                self._const[key] = (torch.as_tensor(a, dtype=torch.int64, device=x.device),
                                    torch.as_tensor(b, dtype=torch.int64, device=x.device))
        return self._const[key]

    def quantize(self, x: "torch.Tensor", rounding: str = "nearest_even", generator=None) -> "torch.Tensor":
        """Quantized float32 values of ``x`` (no gradient semantics; see :func:`quantize_ste`)."""
        fmt = self.format
        x = x.to(torch.float32)
        if isinstance(fmt, Fixed):
            return _fixed(x, fmt.bits, 2.0 ** fmt.frac_bits, 2.0 ** -fmt.frac_bits, rounding, generator)
        if isinstance(fmt, UFixed):  # unsigned: k in [0, 2**bits - 1], -0 -> +0 as the reference
            k = torch.clamp(_round(x * 2.0 ** fmt.frac_bits, rounding, generator), 0.0, 2.0 ** fmt.bits - 1) + 0.0
            return k * 2.0 ** -fmt.frac_bits
        if isinstance(fmt, Minifloat):
            return _minifloat(x, fmt, rounding, generator)
        if isinstance(fmt, Pow2):
            return _pow2(x, fmt.exp_min, fmt.exp_max, rounding, generator)
        first = fmt.formats[0]
        p, q = self._channel_params(x)
        if isinstance(first, Fixed):
            return _fixed(x, first.bits, p, q, rounding, generator)
        return _pow2(x, p, q, rounding, generator)


def _fixed(x, bits, scale, inv, rounding, generator):
    # x * 2**F is exact in float32 (a product that is subnormal rounds to +-0 either way, one
    # that overflows saturates either way); k * 2**-F is exact for the formats formats.py accepts.
    k = _round(x * scale, rounding, generator)
    k = torch.clamp(k, -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    return k * inv


def _minifloat(x, fmt: Minifloat, rounding, generator):
    x64 = x.to(torch.float64)
    _, ex = torch.frexp(x64.abs())
    e = torch.clamp(ex.to(torch.int64) - 1, min=fmt.emin)
    m = fmt.mant_bits
    q = _round(x64 * _pow2_f64(m - e), rounding, generator) * _pow2_f64(e - m)
    q = torch.clamp(q, -fmt.max_value, fmt.max_value)
    q = torch.where(q.abs() < fmt.smallest_positive, q * 0.0, q)
    return q.to(torch.float32)


def _pow2(x, exp_min, exp_max, rounding, generator):
    x64 = x.to(torch.float64)
    a = x64.abs()
    _, ex = torch.frexp(a)
    f = ex.to(torch.int64) - 1  # floor(log2 a)
    lower = _pow2_f64(torch.clamp(f, -1022, 1023))
    if rounding == "nearest_even":
        up = a >= _SQRT2 * lower
    else:  # up with probability (a - 2**f) / 2**f: unbiased in value
        up = _uniform(a.shape, a, generator, torch.float64) < (a / lower - 1.0)
    lo = exp_min if isinstance(exp_min, torch.Tensor) else torch.tensor(exp_min, device=x.device)
    hi = exp_max if isinstance(exp_max, torch.Tensor) else torch.tensor(exp_max, device=x.device)
    k = torch.minimum(torch.maximum(f + up.to(torch.int64), lo), hi)
    k = torch.where(torch.isinf(a), hi.expand_as(k) if hi.dim() else hi, k)
    q = _pow2_f64(k)
    q = torch.where(x64 < 0, -q, q)
    q = torch.where(x64 == 0, torch.zeros_like(q), q)  # both zeros give +0, as the reference
    q = torch.where(torch.isnan(x64), torch.full_like(q, float("nan")), q)
    return q.to(torch.float32)


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized values; backward: the incoming gradient, unchanged."""

    @staticmethod
    def forward(ctx, x, tformat, rounding, generator):  # noqa: D401 - torch signature
        return tformat.quantize(x, rounding, generator)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


def quantize_ste(x: "torch.Tensor", tformat: TorchFormat, rounding: str = "nearest_even",
                 generator=None) -> "torch.Tensor":
    """Quantize ``x`` with a straight-through gradient (d quantize(x) / dx taken as 1)."""
    return _StraightThrough.apply(x, tformat, rounding, generator)


def quantize(x, fmt: Format | str, rounding: str = "nearest_even", seed: int | None = None):
    """Like :func:`ristretto_onnx.formats.quantize`, on a torch tensor (or anything tensor-like)."""
    generator = None
    if rounding == "stochastic":
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return TorchFormat(fmt).quantize(torch.as_tensor(x), rounding, generator)
