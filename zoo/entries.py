"""The two kinds of zoo entry: datasets and FP32 models, as typed frozen records.

An entry holds facts only (files and digests, preprocessing, classes, accuracies with where they
were measured); opening the data is one method away, so listing the zoo never touches disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ristretto_onnx.data import Dataset, Preprocess, load_dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.zoo.store import ZooFile, find, locate


@dataclass(frozen=True)
class _Entry:
    """Fields shared by datasets and models. ``files[0]`` is the entry's main file."""

    name: str
    files: tuple[ZooFile, ...]
    preprocess: Preprocess
    num_classes: int
    description: str
    source: str
    license: str
    classes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    kind: ClassVar[str] = ""

    @property
    def file(self) -> ZooFile:
        return self.files[0]

    @property
    def found(self) -> bool:
        """Whether every file is present on the search path (not verified, no download)."""
        return all(find(f) is not None for f in self.files)

    def locate(self, *, verify: bool = True) -> Path:
        """Path of the main file; every file is looked up (and sha256-checked) first."""
        paths = [locate(f, verify=verify) for f in self.files]
        return paths[0]


@dataclass(frozen=True)
class DatasetEntry(_Entry):
    """A labelled dataset; ``preprocess`` is what the zoo's models trained on it expect."""

    count: int = 0
    kind: ClassVar[str] = "dataset"

    def open(self, preprocess: Preprocess | None = None) -> Dataset:
        """The dataset, streamed from its files, with this entry's (or the given) preprocessing."""
        dataset = load_dataset(self.locate(), preprocess if preprocess is not None
                               else self.preprocess)
        if len(dataset) != self.count:
            raise RistrettoError(f"zoo dataset {self.name} at {self.locate(verify=False)} has "
                                 f"{len(dataset)} images, expected {self.count}")
        dataset.name = f"zoo:{self.name}"
        return dataset


@dataclass(frozen=True)
class ModelEntry(_Entry):
    """A pretrained FP32 ONNX model with the data it is scored and calibrated on.

    ``dataset`` is the test split its ``fp32_top1_measured`` comes from (onnxruntime, whole
    split); ``calib_dataset`` is the split to calibrate and fine-tune on. ``fp32_top1_published``
    is the figure the weights' authors report, usually on other data (see ``published_note``).
    """

    dataset: str = ""
    calib_dataset: str = ""
    input_shape: tuple[int, ...] = ()
    fp32_top1_measured: float | None = None
    fp32_top5_measured: float | None = None
    fp32_top1_published: float | None = None
    published_note: str = ""
    calib_note: str = ""
    kind: ClassVar[str] = "model"
