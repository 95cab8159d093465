"""Fixtures of the fine-tuning tests: a simulated digits CNN (embedded, no shared zoo needed)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_sim():
    from ristretto_onnx import zoo
    from ristretto_onnx.quantize import QuantizeOptions, quantize

    calib = zoo.model_dataset("digits-cnn", "calib")
    r = quantize(str(zoo.resolve_model("zoo:digits-cnn")),
                 QuantizeOptions(scheme="dfp", weight_bits=3, act_bits=6, calib_size=300,
                                 range_rule="mse", bias_correction="off"), calib)  # loses accuracy to win back
    return r.model
