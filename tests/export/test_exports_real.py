"""Acceptance of issue 13 on the zoo: QDQ and QONNX exports reproduce the simulated model exactly,
the hardware report's totals match an independent count (real models, ../shared/zoo)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ristretto_onnx.cli import main
from ristretto_onnx.runtime.session import available_cpus, create_session
from tests.export.independent import macs_per_image, weight_bits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sims(tmp_path_factory, shared_zoo):
    """lenet-mnist and resnet20-cifar10 quantized at dfp 8 by the CLI, as a user does."""
    import os

    os.environ["RISTRETTO_ZOO"] = str(shared_zoo)
    folder = tmp_path_factory.mktemp("sims")
    paths = {}
    for name in ("lenet-mnist", "resnet20-cifar10"):
        paths[name] = folder / f"{name}.onnx"
        assert main(["quantize", f"zoo:{name}", str(paths[name]), "--scheme", "dfp", "--bits", "8"]) == 0
    return paths


def _images(name: str, n: int) -> np.ndarray:
    from ristretto_onnx.zoo import model_dataset

    return np.concatenate([x for x, _ in model_dataset(name, "test").take(n).batches(500)])


def _run(session, x, batch=500):
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def test_resnet20_qdq_is_identical_to_the_simulation_on_2000_images(sims, tmp_path):
    sim = sims["resnet20-cifar10"]
    out = tmp_path / "r20-qdq.onnx"
    assert main(["export", str(sim), str(out), "--to", "qdq"]) == 0
    qdq = onnx.load(out)
    assert not [n for n in qdq.graph.node if n.domain == "ai.ristretto"]
    # 40 activation slots less the 10 inputs that read the previous output through a ReLU in its format
    assert len([n for n in qdq.graph.node if n.op_type == "QuantizeLinear"]) >= 30
    x = _images("resnet20-cifar10", 2000)
    ref = _run(create_session(sim), x)
    assert np.array_equal(_run(create_session(out), x), ref)  # all optimizations, QDQ fusion off
    plain = ort.SessionOptions()
    plain.intra_op_num_threads = available_cpus()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(out), plain, providers=["CPUExecutionProvider"])
    assert np.array_equal(_run(session, x[:500]), ref[:500])  # no optimization at all (slow: 500)


@pytest.mark.parametrize("name, n", [("lenet-mnist", 200), ("resnet20-cifar10", 64)])
def test_qonnx_export_runs_in_qonnx_executor_with_our_outputs(sims, tmp_path, name, n):
    from tests.export.test_qonnx import execute_qonnx

    out = tmp_path / f"{name}-qonnx.onnx"
    assert main(["export", str(sims[name]), str(out), "--to", "qonnx"]) == 0
    exported = onnx.load(out)
    # LeNet: 12 quantizers less the 3 inputs already on their format's grid (set_formats)
    assert len([n for n in exported.graph.node if n.op_type == "Quant"]) >= 9
    x = _images(name, n)
    got = execute_qonnx(exported, x)
    assert np.array_equal(got, _run(create_session(sims[name]), x))


@pytest.mark.parametrize("name", ["lenet-mnist", "resnet20-cifar10"])
def test_report_totals_equal_an_independent_count(sims, shared_zoo, name):
    from ristretto_onnx.export.hw_report import hardware_report

    sim = onnx.load(sims[name])
    report = hardware_report(sim, sram_kib=256)
    float_model = onnx.load(shared_zoo / "models" / f"{name}.onnx")
    assert report.total_macs == macs_per_image(float_model)
    assert report.weight_bytes == weight_bits(float_model, sim) / 8
    assert report.mac_buckets == {"8x8": report.total_macs}
    if name == "resnet20-cifar10":  # 0.27 M weights: ~41 M MACs per 32x32 image, as published
        assert 40e6 < report.total_macs < 42e6 and report.weight_bytes == report.weight_bytes_fp32 / 4
