"""The hardware report: totals against an independent count, widths, SRAM fit, the three renderings."""

from __future__ import annotations

import json
import math

import onnx
import pytest

from ristretto_onnx.export.hw_report import hardware_report
from ristretto_onnx.export.hw_report_render import to_dict, to_markdown, write_json, write_plot
from ristretto_onnx.passes.slots import set_metadata
from tests.export.independent import macs_per_image, weight_bits
from tests.export.sims import sim_model
from tests import builders as synth

REPORT_MODELS = ("conv_relu_conv", "residual_block", "inception", "depthwise_grouped", "option_a_shortcut",
                 "flatten_gemm", "matmul_add", "conv_transpose")


@pytest.mark.parametrize("config", ["dfp8", "w4a12", "pow2-channel", "minifloat8"])
@pytest.mark.parametrize("name", REPORT_MODELS)
def test_total_macs_and_weight_bytes_equal_an_independent_count(name, config):
    sim = sim_model(name, config)
    report = hardware_report(sim)
    float_model = onnx.shape_inference.infer_shapes(getattr(synth, name)())
    assert report.total_macs == macs_per_image(float_model) > 0
    assert report.weight_bits == weight_bits(float_model, sim)
    assert report.weight_bytes == report.weight_bits / 8
    assert report.weight_bytes_fp32 == weight_bits(float_model, float_model) / 8


def test_flatten_gemm_layer_by_layer():
    report = hardware_report(sim_model("flatten_gemm", "w4a12"), sram_kib=0.2)
    conv, fc1, fc2 = report.layers
    # conv: 2 x 6 x 6 outputs, K = 3 * 3 * 3; fc1: 5 outputs, K = 18; fc2: 4 outputs, K = 5
    assert (conv.macs, conv.accumulation_length, fc1.macs, fc2.macs) == (72 * 27, 27, 90, 20)
    assert conv.mac_bucket == "12x4" and report.mac_buckets == {"12x4": 72 * 27 + 90 + 20}
    assert conv.multiplier_area == 12 * 4 / 1024
    assert conv.accumulator_bits == 12 + 4 + math.ceil(math.log2(27))
    assert fc2.accumulator_bits == 12 + 4 + 3
    assert conv.tensor("weights").window.startswith("FL ") and conv.tensor("bias").format == "float"
    # weights 4 bits, biases float (32 bits): 126 bytes fit the 204.8-byte SRAM ...
    assert report.parameter_bytes == (54 + 90 + 20) * 4 / 8 + (2 + 5 + 4) * 4 == 126
    # ... the largest buffer, the 3 x 8 x 8 input at 12 bits (288 bytes), does not
    assert report.largest_activation_buffer_bytes == 192 * 12 / 8
    assert report.sram_fit == {"weights": True, "largest_activation_buffer": False, "both": False}


def test_pow2_layers_are_shift_only():
    report = hardware_report(sim_model("conv_relu_conv", "pow2-channel"))
    for layer in report.layers:
        assert layer.shift_only and layer.multiplier_area == 0 and layer.mac_bucket == "32xshift"
        assert layer.accumulator_bits is None  # float inputs: the sum is floating point


def test_accuracy_comes_from_the_compress_metadata(tmp_path):
    sim = onnx.ModelProto()
    sim.CopyFrom(sim_model("conv_relu_conv", "dfp8"))
    assert hardware_report(sim).accuracy is None
    set_metadata(sim, "ristretto.compress", json.dumps({"scheme": "dfp", "metric": "top1", "baseline": 0.91,
                                                        "final": 0.905, "tolerance": 0.01}))
    report = hardware_report(sim, sram_kib=64)
    assert report.accuracy.drop == pytest.approx(0.005) and report.accuracy.tolerance == 0.01
    md = to_markdown(report)
    assert "top1 0.9100 -> 0.9050" in md and "SRAM 64.0 KiB" in md and "| conv1 |" in md
    d = to_dict(report)
    assert d["totals"]["macs"] == report.total_macs and d["accuracy"]["final"] == 0.905
    assert json.loads(write_json(report, tmp_path / "r.json").read_text()) == json.loads(json.dumps(d))
    png = write_plot(report, tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
