"""An independent numpy implementation of the format definitions (README, issue #2).

Written differently from ``ristretto_onnx.formats`` on purpose: exponents come from the float32
bit pattern instead of ``frexp``, ties are resolved by hand instead of ``np.rint``, pow2 rounds
``log2`` in float64. Agreement of both with onnxruntime is the bit-exactness proof.
"""

from __future__ import annotations

import numpy as np


def rne(v: np.ndarray) -> np.ndarray:
    """Round half to even, by hand (v float64, exact); a zero result keeps v's sign (IEEE)."""
    with np.errstate(invalid="ignore"):
        k = np.floor(v + 0.5)
        tie = (k - v) == 0.5
        odd = np.mod(k, 2) != 0
    k = np.where(tie & odd, k - 1, k)
    return np.where(k == 0, np.copysign(0.0, v), k)


def floor_log2(a: np.ndarray) -> np.ndarray:
    """floor(log2 a) for positive finite float32 a, from the bit pattern."""
    a32 = a.astype(np.float32)
    bits = a32.view(np.uint32).astype(np.int64)
    biased = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    sub = biased == 0
    # subnormal: value = mant * 2**-149, floor(log2) = bit_length(mant) - 1 - 149
    sub_e = np.floor(np.log2(np.maximum(mant, 1).astype(np.float64))) - 149
    return np.where(sub, sub_e, biased - 127).astype(np.int64)


def fixed(x: np.ndarray, bits: int, frac: int) -> np.ndarray:
    v = x.astype(np.float64) * 2.0**frac
    k = np.clip(rne(v), -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    return (k * 2.0**-frac).astype(np.float32)


def minifloat(x: np.ndarray, bits: int, e_bits: int) -> np.ndarray:
    m = bits - 1 - e_bits
    bias = 2 ** (e_bits - 1) - 1
    emin, emax = 1 - bias, 2**e_bits - 1 - bias
    mx = (2 - 2.0**-m) * 2.0**emax
    x64 = x.astype(np.float64)
    a = np.abs(x64)
    fin = np.isfinite(a) & (a > 0)
    e = np.full(a.shape, emin, dtype=np.int64)
    e[fin] = np.maximum(floor_log2(a[fin]), emin)
    scale = np.power(2.0, (e - m).astype(np.float64))
    with np.errstate(invalid="ignore"):
        q = rne(x64 / scale) * scale
    q = np.where(np.isnan(x64), np.nan, np.clip(q, -mx, mx))
    q = np.where(np.abs(q) < 2.0**emin, np.copysign(0.0, x64), q)
    return q.astype(np.float32)


def pow2(x: np.ndarray, emin: int, emax: int) -> np.ndarray:
    x64 = x.astype(np.float64)
    a = np.abs(x64)
    with np.errstate(divide="ignore"):
        k = np.clip(np.rint(np.log2(a)), emin, emax)
    q = np.copysign(np.power(2.0, k), x64)
    q = np.where(a == 0, 0.0, q)  # zero of either sign -> +0
    q = np.where(np.isnan(x64), np.nan, q)
    return q.astype(np.float32)


def ufixed(x: np.ndarray, bits: int, frac: int) -> np.ndarray:
    """Unsigned: codes 0 .. 2**bits - 1; every negative value and both zeros give +0."""
    k = np.minimum(rne(x.astype(np.float64) * 2.0**frac), 2.0**bits - 1)
    k = np.where(np.isnan(k), np.nan, np.where(k > 0, k, 0.0))
    return (k * 2.0**-frac).astype(np.float32)


def reference(x: np.ndarray, fmt: str) -> np.ndarray:
    kind, a, b = fmt.split(":")
    fn = {"fixed": fixed, "ufixed": ufixed, "minifloat": minifloat, "pow2": pow2}[kind]
    return fn(np.asarray(x, np.float32), int(a), int(b))
