"""The thesis's own numbers (Gysel 2016, /work/shared/reference), quoted as a reference column.

Nothing here is measured by us: every value is copied from the thesis text or from the Ristretto
blog post, with the table or section it comes from, so RESULTS.md can print it next to our
measurement and label it as the thesis's. Accuracies are fractions (0.9915 = 99.15 %).

The thesis fine-tunes after quantizing; ristretto-onnx does not, so our numbers compare with the
bracketed "before fine-tuning" values, which are kept as ``before``.
"""

from __future__ import annotations

#: Thesis networks and the zoo model that stands in for each (the others are not in the zoo).
STAND_IN = {
    "LeNet": "lenet-mnist",
    "CIFAR-10 full": "resnet20-cifar10",  # Caffe's 3-conv cifar10_full is not in the zoo
    "CaffeNet": "squeezenet1.1-imagenet",  # ImageNet stand-in in tables 4.1, 5.1, 6.1, 7.1
    "SqueezeNet": "squeezenet1.1-imagenet",  # thesis: SqueezeNet 1.0; zoo: 1.1
    "GoogLeNet": None,
}

#: Table 5.1: one category in dynamic fixed point, the rest float; 16/8/4/2 bits.
TABLE_5_1 = {
    "LeNet": {"fp32": 0.991,
              "activations": (0.991, 0.991, 0.989, 0.859),
              "conv_weights": (0.991, 0.991, 0.991, 0.989),
              "fc_weights": (0.991, 0.991, 0.989, 0.987)},
    "CIFAR-10 full": {"fp32": 0.817,
                      "activations": (0.816, 0.816, 0.796, 0.480),
                      "conv_weights": (0.817, 0.814, 0.759, 0.191),
                      "fc_weights": (0.817, 0.808, 0.799, 0.775)},
    "CaffeNet": {"fp32": 0.569,
                 "activations": (0.568, 0.567, 0.060, 0.001),
                 "conv_weights": (0.569, 0.567, 0.001, 0.001),
                 "fc_weights": (0.569, 0.563, 0.001, 0.001)},
}
TABLE_5_1_WIDTHS = (16, 8, 4, 2)

#: Table 4.1: static fixed point, all layer outputs and parameters in one Q format.
#: ``format`` is the thesis's Q<IL>.<FL> (IL counts the sign bit, eq. 4.1).
TABLE_4_1 = {
    "LeNet": {"fp32": 0.9915, "bits": 8, "format": "Q4.4", "finetuned": 0.9888, "before": 0.8890},
    "CIFAR-10 full": {"fp32": 0.8169, "bits": 16, "format": "Q8.8", "finetuned": 0.8138, "before": 0.8094},
    "CaffeNet": {"fp32": 0.5690, "bits": 16, "format": "Q9.7", "finetuned": 0.5248, "before": 0.5213},
}

#: Table 5.2: dynamic fixed point, (layer outputs, conv, fc) bits.
TABLE_5_2 = [
    {"network": "LeNet (Exp 1)", "bits": (4, 4, 4), "fp32": 0.9915, "finetuned": 0.9895, "before": 0.9872},
    {"network": "LeNet (Exp 2)", "bits": (4, 2, 2), "fp32": 0.9915, "finetuned": 0.9881, "before": 0.9803},
    {"network": "CIFAR-10 full", "bits": (8, 8, 8), "fp32": 0.8169, "finetuned": 0.8144, "before": 0.8064},
    {"network": "CaffeNet", "bits": (8, 8, 8), "fp32": 0.5690, "finetuned": 0.5600, "before": 0.5577},
    {"network": "SqueezeNet", "bits": (8, 8, 8), "fp32": 0.5768, "finetuned": 0.5709, "before": 0.5525},
    {"network": "GoogLeNet", "bits": (8, 8, 8), "fp32": 0.6892, "finetuned": 0.6657, "before": 0.6607},
]

#: Table 6.1: 8-bit minifloat for layer outputs and parameters; (exponent, mantissa) bits.
TABLE_6_1 = {
    "LeNet": {"fp32": 0.9915, "bits": 8, "split": (4, 3), "finetuned": 0.9920, "before": 0.9920},
    "CIFAR-10 full": {"fp32": 0.8169, "bits": 8, "split": (5, 2), "finetuned": 0.8085, "before": 0.8047},
    "CaffeNet": {"fp32": 0.5690, "bits": 8, "split": (5, 2), "finetuned": 0.5252, "before": 0.5230},
}

#: Table 7.1: power-of-two weights with exponents -8..-1 (4 bits), layer outputs in float.
TABLE_7_1 = {
    "LeNet": {"fp32": 0.9915, "finetuned": 0.9916, "before": 0.9909},
    "CIFAR-10 full": {"fp32": 0.8169, "finetuned": 0.7748, "before": 0.7465},
    "CaffeNet": {"fp32": 0.5690, "finetuned": 0.5325, "before": 0.5058},
}
POW2_WINDOW = (-8, -1)

#: Figures 8.1-8.3 are plots; the thesis text (ch. 8) states only these points of them.
FIGURE_8_TEXT = [
    ("LeNet", "minifloat", 5, 0.9796, "8.3: 5-bit minifloat (4 exponent bits, no mantissa)"),
    ("LeNet", "minifloat", 4, 0.1009, "8.3: accuracy drops sharply to 10.09 % below 5 bits"),
    ("LeNet", "dfp", 5, None, "8.2: 5-bit dfp reaches the FP32 accuracy"),
    ("CIFAR-10 full", "dfp", 8, None, "8.2: 8-bit dfp reaches the FP32 accuracy"),
    ("CaffeNet", "dfp", 8, None, "8.2: 8-bit dfp within 0.3 % (absolute) of FP32"),
    ("CIFAR-10 full", "minifloat", 6, None, "8.3: needs at least 6-bit minifloat (5 exponent bits)"),
    ("CaffeNet", "fixed", 18, None, "5.3.1: static fixed point performs well down to 18 bits (fig. 5.3)"),
    ("CaffeNet", "fixed", 14, None, "8.1: at 14 bits 2.82 % of conv outputs saturate, accuracy drops"),
]

#: The Ristretto blog post's results (no statement about fine-tuning there).
BLOG = {
    "dfp8": {"AlexNet": (0.5690, 0.5614), "GoogLeNet": (0.6893, 0.6837), "SqueezeNet": (0.5768, 0.5721)},
    "multiplier_free": {"LeNet": (0.9915, 0.9915), "AlexNet": (0.5690, 0.5318)},
}
