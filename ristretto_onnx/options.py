"""The options of ``compress`` and ``quantize``: frozen, self-validating configurations.

Both commands run the same scheme rules (:mod:`ristretto_onnx.schemes`), so both validate their
scheme options with :func:`~ristretto_onnx.schemes.check_scheme` and share its defaults (the
range rule :data:`~ristretto_onnx.schemes.DEFAULT_RANGE_RULE`; the thesis's ``max`` is opt-in).
``compress`` searches the widths (thesis 9.2); ``quantize`` is given them (one point of the design
space, thesis ch. 4-7).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Format, Pow2, parse_format
from ristretto_onnx.schemes import (DEFAULT_POW2, DEFAULT_RANGE_RULE, Scheme, StaticFixedPoint, check_scheme,
                                    make_scheme)


def _check_positive(options: object, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(options, name) < 1:
            raise RistrettoError(f"--{name.replace('_', '-')} must be positive")


@dataclass(frozen=True)
class Backend:
    """Where plans are scored: ``local`` (this process) or ``ray`` (actors holding data shards).

    Not part of :class:`CompressOptions`: the backend changes where the work runs, never what
    is decided, so a report does not depend on it.
    """

    kind: str = "local"
    address: str | None = None  # a Ray cluster's address; None starts a local one
    workers: int = 2
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("local", "ray"):
            raise RistrettoError(f"--backend must be local or ray, got {self.kind!r}")
        if self.workers < 1:
            raise RistrettoError(f"--workers must be at least 1, got {self.workers}")


@dataclass(frozen=True)
class CompressOptions:
    scheme: str = "dfp"
    tolerance: float = 0.01
    tolerance_mode: str = "absolute"  # or "relative" (divided by the baseline)
    metric: str = "top1"
    calib_size: int = 500
    granularity: str = "group"  # or "layer"
    #: "tensor", "channel" or "auto" (granularity_rule: per layer, a free shift either way, so a
    #: depthwise network needs no flag); None: auto for the schemes with per-channel forms (dfp,
    #: pow2, auto), tensor for fixed and minifloat.
    weight_granularity: str | None = None
    range_rule: str = DEFAULT_RANGE_RULE  # dfp: mse, max (thesis eq. 5.2) or percentile:P
    min_bits: int | None = None
    max_bits: int | None = None
    exp_min: int | None = None
    exp_max: int | None = None
    batch_size: int = 256
    seed: int = 0
    fold_bn: bool = True
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    early_reject: bool = True
    #: dfp: ufixed for activations that cannot be negative (passes.nonnegative).
    unsigned: bool = True

    def __post_init__(self) -> None:
        if self.weight_granularity is None:
            object.__setattr__(self, "weight_granularity",
                               "auto" if self.scheme in ("dfp", "pow2", "auto") else "tensor")
        check_scheme(self.scheme, weight_granularity=self.weight_granularity, range_rule=self.range_rule)
        if self.tolerance_mode not in ("absolute", "relative"):
            raise RistrettoError("--tolerance-mode must be absolute or relative")
        if not 0 <= self.tolerance < 1:
            raise RistrettoError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        if self.granularity not in ("group", "layer"):
            raise RistrettoError("--granularity must be group or layer")
        _check_positive(self, ("calib_size",))
        if self.min_bits is not None and self.max_bits is not None and self.min_bits > self.max_bits:
            raise RistrettoError("--min-bits must not exceed --max-bits")

    def scheme_named(self, name: str, layer_weights=None) -> Scheme:
        """One of the schemes this run searches (``auto``: each in turn); with weight granularity
        ``auto``, ``layer_weights`` (granularity_rule.measure_layer_weights) decide per layer."""
        wg = self.weight_granularity if name in ("dfp", "pow2") else "tensor"
        make = lambda g: make_scheme(name, weight_granularity=g, exp_min=self.exp_min,  # noqa: E731
                                     exp_max=self.exp_max, range_rule=self.range_rule)
        if wg != "auto":
            return make(wg)
        from ristretto_onnx.granularity_rule import LayerwiseGranularity
        return LayerwiseGranularity.of(make("tensor"), make("channel"), layer_weights or {})


@dataclass(frozen=True)
class QuantizeOptions:
    """One configuration: a scheme and bit widths, or one forced ``format``.

    ``pow2`` fixes the power-of-two window; without it ``--bits`` sets the window's width as in
    ``compress``, and without both the thesis's ``pow2:-8:-1`` is used.
    """

    scheme: str | None = None
    bits: int | None = None
    weight_bits: int | None = None
    act_bits: int | None = None
    format: Format | None = None
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    fold_bn: bool = True
    quantize_bias: bool = False
    pow2: Pow2 | None = None
    rounding: str = "nearest_even"
    weight_granularity: str = "tensor"  # or "channel": one format per output channel (dfp, pow2)
    #: dfp: mse, max (thesis eq. 5.2), percentile:P, or auto (mse or max, whichever brings the
    #: outputs closest to FP32's on calibration images; the other schemes have one rule).
    range_rule: str = "auto"
    calib_size: int = 500
    score_size: int = 300
    batch_size: int = 256
    seed: int = 0
    #: dfp: ufixed for activations that cannot be negative (passes.nonnegative).
    unsigned: bool = True
    #: dfp: a layer input reading another layer's output unchanged takes its format (passes.grid_ties).
    round_once: bool = True
    #: off, weights (passes.bias_correction; "on" is its old name), outputs (ristretto_onnx.output_bias)
    #: or auto (whichever brings the outputs closest to FP32's on calibration images, or none).
    bias_correction: str = "auto"
    #: calibration images the ``outputs`` bias correction measures each layer's mean error on.
    bias_size: int = 256
    #: per-channel dfp weights: "output" (ristretto_onnx.channel_rule) or "range" (the range rule per channel).
    channel_rule: str = "output"
    #: cross-layer equalization of Conv -> ReLU/ReLU6 -> Conv pairs first (passes.equalize).
    equalize: bool = False
    #: dfp: fractional lengths moved while the network's output error falls (ristretto_onnx.refine).
    refine: bool = False
    refine_size: int = 256
    #: fixed/dfp weights: nearest, adaptive (ristretto_onnx.weight_rounding: each layer's weights
    #: rounded for its output error on calibration inputs) or auto (whichever, bias-corrected,
    #: brings the outputs closest to FP32's on calibration images; nearest without them).
    weight_rounding: str = "auto"

    def __post_init__(self) -> None:
        if self.format is not None:
            object.__setattr__(self, "format", parse_format(self.format))
        if self.scheme == "auto":
            raise RistrettoError("quantize needs one scheme (fixed, dfp, minifloat, pow2); compress tries them all")
        if self.range_rule == "auto" and (self.scheme != "dfp" or self.format is not None):
            object.__setattr__(self, "range_rule", DEFAULT_RANGE_RULE)  # one rule there: nothing to choose
        check_scheme(self.scheme, weight_granularity=self.weight_granularity,
                     range_rule=DEFAULT_RANGE_RULE if self.range_rule == "auto" else self.range_rule,
                     forced_format=self.format is not None)
        if self.scheme is None and self.format is None:
            raise RistrettoError("give a --scheme (fixed, dfp, minifloat, pow2) or a --format")
        for name in ("bits", "weight_bits", "act_bits"):
            v = getattr(self, name)
            if v is not None and not 2 <= v <= 32:
                raise RistrettoError(f"--{name.replace('_', '-')} must be between 2 and 32, got {v}")
        if self.format is None and self.scheme != "pow2" and None in (self.weight_bits_, self.act_bits_):
            raise RistrettoError(f"--scheme {self.scheme} needs --bits (or both --weight-bits and --act-bits)")
        if self.bias_correction not in ("auto", "on", "off", "weights", "outputs"):
            raise RistrettoError("--bias-correction must be auto, weights (or on), outputs or off, "
                                 f"not {self.bias_correction!r}")
        if self.weight_rounding not in ("nearest", "adaptive", "auto"):
            raise RistrettoError(f"--weight-rounding must be nearest, adaptive or auto, not {self.weight_rounding!r}")
        if self.channel_rule not in ("output", "range"):
            raise RistrettoError(f"--channel-rule must be output or range, not {self.channel_rule!r}")
        _check_positive(self, ("calib_size", "score_size", "batch_size", "refine_size", "bias_size"))

    @property
    def weight_bits_(self) -> int | None:
        return self.weight_bits if self.weight_bits is not None else self.bits

    @property
    def act_bits_(self) -> int | None:
        return self.act_bits if self.act_bits is not None else self.bits

    @property
    def needs_calibration(self) -> bool:
        return self.format is None and self.scheme in ("fixed", "dfp", "minifloat")

    @property
    def pow2_window(self) -> Pow2 | None:
        """The fixed pow2 window: given, or the thesis's when no width is given either."""
        return self.pow2 or (DEFAULT_POW2 if self.weight_bits_ is None else None)

    def make_scheme(self) -> Scheme:
        window = self.pow2_window
        rule = DEFAULT_RANGE_RULE if self.range_rule == "auto" else self.range_rule  # quantize chooses it first
        scheme = make_scheme(self.scheme, weight_granularity=self.weight_granularity, range_rule=rule,
                             exp_min=None if window is None else window.exp_min,
                             exp_max=None if window is None else window.exp_max)
        # quantize chooses fixed point splits on calibration images only: one bit of headroom first
        return replace(scheme, headroom=1) if isinstance(scheme, StaticFixedPoint) else scheme

    def widths(self, scheme: Scheme) -> dict[str, int | None]:
        """The bit width of each category the scheme quantizes (biases only when asked)."""
        cats = list(scheme.categories) + (["bias"] if self.quantize_bias and scheme.name != "pow2" else [])
        # Only pow2 may lack a width: its fixed window then sets it.
        wbits = self.weight_bits_ if self.weight_bits_ is not None else self.pow2_window.bits
        return {c: self.act_bits_ if c == "activations" else wbits for c in cats}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = None if self.format is None else str(self.format)
        d["pow2"] = None if self.pow2_window is None else str(self.pow2_window)
        d["layers"], d["exclude"] = list(self.layers), list(self.exclude)
        return d
