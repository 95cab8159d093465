"""Torch quantizers: bit-exact with the numpy reference (nearest-even), seeded unbiased
stochastic rounding, straight-through gradients."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ristretto_onnx import formats  # noqa: E402
from ristretto_onnx.finetune.quantizers import TorchFormat, quantize, quantize_ste  # noqa: E402

FORMATS = ["ufixed:8:4", "ufixed:1:0", "ufixed:31:20", "fixed:8:4", "fixed:2:1", "fixed:4:-1", "fixed:16:126", "fixed:8:-120", "fixed:32:24",
           "minifloat:8:4", "minifloat:3:1", "minifloat:16:5", "minifloat:31:7", "minifloat:2:1",
           "pow2:-8:-1", "pow2:-125:126", "pow2:0:0",
           "fixed:4:1,2,3@0", "fixed:6:3,-2@-1", "pow2:-8,-7,-20:-1,0,-10@0"]


def _samples() -> np.ndarray:
    rng = np.random.default_rng(12)
    patterns = rng.integers(0, 2**32, size=120_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 0.5, 1.5, 2.5, -0.5, -2.5, 0.75, 1e-45,
                        -1e-45, 3.4e38, -3.4e38, 1.4142135, 1.4142137], np.float32)
    # every binade and tie boundary near the formats' ranges, with neighbours
    grid = np.ldexp(1.0, np.arange(-130, 128)).astype(np.float32)
    grid = np.concatenate([grid, grid * np.float32(1.5), grid * np.float32(np.sqrt(2))])
    grid = np.concatenate([grid, np.nextafter(grid, np.float32(0)), np.nextafter(grid, np.float32(np.inf))])
    normal = rng.standard_normal(60_000).astype(np.float32) * np.float32(4)
    x = np.concatenate([patterns, special, grid, -grid, normal])
    return x[: len(x) // 6 * 6]


@pytest.mark.parametrize("fmt", FORMATS)
def test_nearest_even_is_bit_exact_with_the_reference(fmt):
    parsed = formats.parse_format(fmt)
    x = _samples()
    if isinstance(parsed, formats.PerChannel):
        n = parsed.channels
        x = x[: len(x) // n * n].reshape(n, -1) if parsed.axis == 0 else x[: len(x) // n * n].reshape(-1, n)
    with np.errstate(all="ignore"):
        ref = formats.quantize(x, fmt)
    got = quantize(x, fmt).numpy()
    ref_bits, got_bits = ref.view(np.uint32), got.view(np.uint32)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.array_equal(ref_bits, got_bits), f"{np.sum(ref_bits != got_bits)} values differ"


@pytest.mark.parametrize("fmt", ["fixed:4:2", "minifloat:6:3", "pow2:-8:-1", "fixed:3:1,2@0"])
def test_stochastic_rounding_is_seeded_unbiased_and_on_the_grid(fmt):
    parsed = formats.parse_format(fmt)
    shape = (2, 50_000) if isinstance(parsed, formats.PerChannel) else (100_000,)
    x = torch.full(shape, 0.3)
    a = quantize(x, fmt, "stochastic", seed=3)
    b = quantize(x, fmt, "stochastic", seed=3)
    c = quantize(x, fmt, "stochastic", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every value is on the format's grid: nearest-even rounding leaves it unchanged
    assert torch.equal(quantize(a, fmt), a)
    # the two neighbours of 0.3 both occur and the mean is 0.3 (expected rounding error 0)
    for row in a.reshape(-1, 50_000):
        assert len(torch.unique(row)) == 2
        assert abs(float(row.mean()) - 0.3) < 0.006


def test_straight_through_gradient_is_the_identity():
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    tf = TorchFormat("fixed:4:1")
    for rounding in ("nearest_even", "stochastic"):
        g = torch.Generator().manual_seed(0)
        y = quantize_ste(x, tf, rounding, g)
        upstream = torch.arange(101, dtype=torch.float32)
        (grad,) = torch.autograd.grad((y * upstream).sum(), x)
        assert torch.equal(grad, upstream)
    assert torch.equal(quantize_ste(x, tf).detach(), tf.quantize(x.detach()))


def test_saturation_and_nan():
    q = quantize(np.array([100.0, -100.0, np.nan], np.float32), "fixed:4:1").numpy()
    assert q[0] == 3.5 and q[1] == -4.0 and np.isnan(q[2])
