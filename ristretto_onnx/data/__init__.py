"""Data: from files on disk to float32 batches in the model's layout.

Three jobs, one module each: :mod:`.preprocess` (raw pixels to model inputs, exactly),
:mod:`.datasets` (sized, re-iterable, batch-at-a-time collections), :mod:`.loaders` (a dataset
from a path, ``zoo:NAME``, arrays or batches); plus :mod:`.conform` (fit a dataset to a model's
input and check its values) and :mod:`.metadata` (the preprocessing a written model records).
"""

from ristretto_onnx.data.datasets import ArrayDataset, Dataset, FolderDataset
from ristretto_onnx.data.loaders import load_dataset
from ristretto_onnx.data.preprocess import (DATA_OPTION_HELP, IMAGE_SUFFIXES, Preprocess, parse_number,
                                            preprocess_from_cli)

__all__ = [
    "ArrayDataset",
    "DATA_OPTION_HELP",
    "Dataset",
    "FolderDataset",
    "IMAGE_SUFFIXES",
    "Preprocess",
    "load_dataset",
    "parse_number",
    "preprocess_from_cli",
]
