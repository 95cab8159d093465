"""Recipe for the embedded default model: a small CNN on scikit-learn's handwritten digits.

Why it exists: the README's main command must run on real data with no network and no shared
zoo. scikit-learn ships the UCI digits (1,797 8x8 images, values 0..16) inside its package, and a
CNN on them trains in seconds with plain numpy, so the model and its data can be rebuilt by anyone
and committed small (``digits-cnn.onnx``, ``digits-calib.npz``, ``digits-test.npz``).

The architecture has what Ristretto quantizes (convolution and fully connected layers with ReLU
and max pooling)::

    input (N,1,8,8) -> Conv 3x3, 8, pad 1 -> Relu -> MaxPool 2 -> Conv 3x3, 16, pad 1 -> Relu
      -> Flatten (256) -> Gemm 32 -> Relu -> Gemm 10 -> logits (N,10)

Determinism: fixed seeds, float64 training (so BLAS summation order stays far below float32
resolution), weights rounded to float32 once at the end, and files written without timestamps.
Rebuilding gives the same bytes: ``python -m ristretto_onnx.zoo.digits``.
"""

from __future__ import annotations

import argparse
import io
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ristretto_onnx.data import Preprocess
from ristretto_onnx.errors import RistrettoError

SPLIT_SEED = 20160101
INIT_SEED = 1
TRAIN_COUNT = 1297  # the rest (500) is the test split
EPOCHS = 30
BATCH = 32
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-4
PREPROCESS = Preprocess(scale=1 / 255, add_channel_axis=True)

MODEL_FILE = "digits-cnn.onnx"
CALIB_FILE = "digits-calib.npz"
TEST_FILE = "digits-test.npz"

Params = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# Data


def load_split() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (test images, labels)): uint8 (N,8,8) 0..255, int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    train, test = order[:TRAIN_COUNT], order[TRAIN_COUNT:]
    return (images[train], labels[train]), (images[test], labels[test])


# --------------------------------------------------------------------------------------------
# Numpy network (internally NHWC, float64)


def init_params(rng: np.random.Generator) -> Params:
    """He-normal weights in ONNX layouts (Conv OIHW, Gemm (out, in)), zero biases."""
    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)

    return {
        "conv1.weight": he((8, 1, 3, 3), 9), "conv1.bias": np.zeros(8),
        "conv2.weight": he((16, 8, 3, 3), 72), "conv2.bias": np.zeros(16),
        "fc1.weight": he((32, 256), 256), "fc1.bias": np.zeros(32),
        "fc2.weight": he((10, 32), 32), "fc2.bias": np.zeros(10),
    }


def _im2col(x: np.ndarray) -> np.ndarray:
    """(N,H,W,C) -> (N*H*W, 9*C) patches of a 3x3, pad-1 convolution, in (kh, kw, c) order."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * h * w, 9 * c)


def _col2im(cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Adjoint of :func:`_im2col`: scatter-add patch gradients back to (N,H,W,C)."""
    n, h, w, c = shape
    cols = cols.reshape(n, h, w, 3, 3, c)
    padded = np.zeros((n, h + 2, w + 2, c))
    for kh in range(3):
        for kw in range(3):
            padded[:, kh:kh + h, kw:kw + w] += cols[:, :, :, kh, kw]
    return padded[:, 1:-1, 1:-1]


def _conv_matrix(weight: np.ndarray) -> np.ndarray:
    """OIHW weight -> (9*C, O) matching the patch order of :func:`_im2col`."""
    return weight.transpose(2, 3, 1, 0).reshape(-1, weight.shape[0])


def forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits for x (N,1,8,8), and what the backward pass needs."""
    n = x.shape[0]
    a0 = x.transpose(0, 2, 3, 1).astype(np.float64)                       # (N,8,8,1)
    cols1 = _im2col(a0)
    z1 = (cols1 @ _conv_matrix(params["conv1.weight"]) + params["conv1.bias"]).reshape(n, 8, 8, 8)
    a1 = np.maximum(z1, 0)
    windows = a1.reshape(n, 4, 2, 4, 2, 8)
    p1 = windows.max(axis=(2, 4))                                          # (N,4,4,8)
    cols2 = _im2col(p1)
    z2 = (cols2 @ _conv_matrix(params["conv2.weight"]) + params["conv2.bias"]).reshape(n, 4, 4, 16)
    a2 = np.maximum(z2, 0)
    f = a2.transpose(0, 3, 1, 2).reshape(n, 256)                          # ONNX Flatten of NCHW
    z3 = f @ params["fc1.weight"].T + params["fc1.bias"]
    a3 = np.maximum(z3, 0)
    logits = a3 @ params["fc2.weight"].T + params["fc2.bias"]
    cache = dict(cols1=cols1, z1=z1, windows=windows, p1=p1, cols2=cols2, z2=z2, f=f, z3=z3, a3=a3)
    return logits, cache


def backward(params: Params, cache: dict[str, np.ndarray], dlogits: np.ndarray) -> Params:
    """Gradients of the loss for every parameter, given d(loss)/d(logits)."""
    n = dlogits.shape[0]
    g: Params = {}
    g["fc2.weight"] = dlogits.T @ cache["a3"]
    g["fc2.bias"] = dlogits.sum(0)
    dz3 = (dlogits @ params["fc2.weight"]) * (cache["z3"] > 0)
    g["fc1.weight"] = dz3.T @ cache["f"]
    g["fc1.bias"] = dz3.sum(0)
    df = dz3 @ params["fc1.weight"]
    dz2 = df.reshape(n, 16, 4, 4).transpose(0, 2, 3, 1) * (cache["z2"] > 0)
    dz2 = dz2.reshape(-1, 16)
    g["conv2.weight"] = (cache["cols2"].T @ dz2).reshape(3, 3, 8, 16).transpose(3, 2, 0, 1)
    g["conv2.bias"] = dz2.sum(0)
    dp1 = _col2im(dz2 @ _conv_matrix(params["conv2.weight"]).T, (n, 4, 4, 8))
    windows = cache["windows"]
    is_max = windows == cache["p1"][:, :, None, :, None, :]
    da1 = (is_max * dp1[:, :, None, :, None, :]).reshape(n, 8, 8, 8)
    dz1 = (da1 * (cache["z1"] > 0)).reshape(-1, 8)
    g["conv1.weight"] = (cache["cols1"].T @ dz1).reshape(3, 3, 1, 8).transpose(3, 2, 0, 1)
    g["conv1.bias"] = dz1.sum(0)
    return g


def _softmax_xent_grad(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(len(labels)), labels] -= 1
    return probs / len(labels)


def train(x: np.ndarray, y: np.ndarray) -> Params:
    """Adam with decoupled weight decay, fixed seed and order; returns float64 parameters."""
    rng = np.random.default_rng(INIT_SEED)
    params = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH):
            idx = order[start:start + BATCH]
            logits, cache = forward(params, x[idx])
            grads = backward(params, cache, _softmax_xent_grad(logits, y[idx]))
            step += 1
            lr = LEARNING_RATE * np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
            for k in params:
                m[k] = beta1 * m[k] + (1 - beta1) * grads[k]
                v[k] = beta2 * v[k] + (1 - beta2) * grads[k] ** 2
                if k.endswith("weight"):
                    params[k] *= 1 - LEARNING_RATE * WEIGHT_DECAY
                params[k] -= lr * m[k] / (np.sqrt(v[k]) + eps)
    return params


# --------------------------------------------------------------------------------------------
# Export


def to_onnx(params: Params, test_top1: float) -> bytes:
    """Serialize float32 weights as an opset-17, IR-8 ONNX model (onnxruntime accepts IR <= 13)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in params.items()]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1"], "conv1",
                         **conv),
        helper.make_node("Relu", ["conv1"], ["relu1"], "relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], "pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"], ["conv2"], "conv2",
                         **conv),
        helper.make_node("Relu", ["conv2"], ["relu2"], "relu2"),
        helper.make_node("Flatten", ["relu2"], ["flatten"], "flatten", axis=1),
        helper.make_node("Gemm", ["flatten", "fc1.weight", "fc1.bias"], ["fc1"], "fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["relu3"], "relu3"),
        helper.make_node("Gemm", ["relu3", "fc2.weight", "fc2.bias"], ["logits"], "fc2",
                         transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits-cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
        doc_string="Small CNN on scikit-learn's 8x8 digits; input = pixels/16 scaled to 0..255, "
                   "then /255. Rebuild: python -m ristretto_onnx.zoo.digits")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="ristretto-onnx zoo.digits")
    helper.set_model_props(model, {"ristretto.test_top1": f"{test_top1:.4f}",
                                   "ristretto.preprocess": str(PREPROCESS)})
    import onnx

    onnx.checker.check_model(model)
    return model.SerializeToString()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An uncompressed .npz with fixed timestamps: same arrays, same bytes (np.savez stamps now)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def _ort_predictions(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnx

    from ristretto_onnx.runtime.session import create_session

    session = create_session(onnx.load_from_string(model_bytes))
    return session.run(["logits"], {"input": x})[0].argmax(axis=1)


@dataclass(frozen=True)
class DigitsBuild:
    """What a build produced and measured."""

    out_dir: Path
    numpy_top1: float
    onnxruntime_top1: float
    train_top1: float
    seconds: float
    model_bytes: int

    def summary(self) -> str:
        return (f"wrote {MODEL_FILE} ({self.model_bytes} bytes), {CALIB_FILE}, {TEST_FILE} to "
                f"{self.out_dir}: test top-1 {self.numpy_top1:.4f} (numpy) = "
                f"{self.onnxruntime_top1:.4f} (onnxruntime), train {self.train_top1:.4f}, "
                f"{self.seconds:.1f} s")


def build(out_dir: Path | None = None) -> DigitsBuild:
    """Train, export and check the digits model; write the three files into ``out_dir``.

    Raises if onnxruntime and the numpy forward pass of the exported float32 weights disagree
    on accuracy: the ONNX graph must compute exactly what was trained.
    """
    from ristretto_onnx.zoo.store import package_dir

    start = time.perf_counter()
    out_dir = Path(out_dir) if out_dir is not None else package_dir()
    (train_x, train_y), (test_x, test_y) = load_split()
    x_train, x_test = PREPROCESS.apply(train_x), PREPROCESS.apply(test_x)
    # One BLAS thread: the matrices are tiny (threads only add contention) and the summation
    # order is then the same on every machine size.
    with threadpool_limits(limits=1):
        params = train(x_train, train_y)
    params32 = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
    numpy_pred = forward(params32, x_test)[0].argmax(axis=1)
    numpy_top1 = float((numpy_pred == test_y).mean())
    train_top1 = float((forward(params32, x_train)[0].argmax(axis=1) == train_y).mean())
    model = to_onnx(params32, numpy_top1)
    ort_top1 = float((_ort_predictions(model, x_test) == test_y).mean())
    if ort_top1 != numpy_top1:
        raise RistrettoError(f"digits model: onnxruntime top-1 {ort_top1} differs from numpy "
                             f"{numpy_top1}; the export does not match the trained network")
    out_dir.mkdir(parents=True, exist_ok=True)
    from ristretto_onnx.passes.save import write_bytes_atomic

    write_bytes_atomic(out_dir / MODEL_FILE, model)
    write_bytes_atomic(out_dir / CALIB_FILE, npz_bytes(images=train_x, labels=train_y))
    write_bytes_atomic(out_dir / TEST_FILE, npz_bytes(images=test_x, labels=test_y))
    return DigitsBuild(out_dir, numpy_top1, ort_top1, train_top1, time.perf_counter() - start,
                       len(model))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ristretto_onnx.zoo.digits",
                                     description="Rebuild the embedded digits-cnn model and data.")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: the installed zoo package folder)")
    print(build(parser.parse_args(argv).out).summary())

if __name__ == "__main__":
    main()
