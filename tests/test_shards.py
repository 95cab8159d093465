"""ristretto_onnx.data.shards: a worker reading its own batches gets the driver's exact inputs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from ristretto_onnx.data import Preprocess, load_dataset
from ristretto_onnx.data.shards import batch_indices, shard_source
from ristretto_onnx.errors import RistrettoError

PRE = Preprocess(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _images(n=23, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)


def _check_shards(ds, batch_size=5, workers=2):
    """Every worker's batches, read from the source after a pickle round trip, equal the driver's."""
    driver = [x for x, _ in ds.batches(batch_size)]
    cut = batch_indices(ds, batch_size)
    assert len(cut) == len(driver)
    kinds = set()
    for w in range(workers):
        mine = {k: cut[k] for k in range(w, len(cut), workers)}
        source = pickle.loads(pickle.dumps(shard_source(ds, mine)))
        kinds.add(source.kind)
        got = source.read()
        assert sorted(got) == sorted(mine)
        for k, x in got.items():
            assert x.dtype == np.float32 and np.array_equal(x, driver[k])
    return kinds


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_shards_read_by_workers_equal_the_driver_batches(tmp_path, compressed):
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, images=_images(), labels=np.arange(23) % 4)
    ds = load_dataset(path, PRE).subset(17, seed=3)  # a seeded subset: indices out of order of storage
    assert _check_shards(ds) == {"npz" if compressed else "memmap"}


def test_npy_and_folder_shards_equal_the_driver_batches(tmp_path):
    np.save(tmp_path / "d.npy", _images())
    assert _check_shards(load_dataset(tmp_path / "d.npy", PRE).take(20)) == {"memmap"}
    for c, img in enumerate(_images(8, seed=1)):
        (tmp_path / "f" / f"c{c % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.kron(img, np.ones((2, 2, 1), np.uint8))).save(tmp_path / "f" / f"c{c % 3}" / f"{c}.png")
    folder = load_dataset(tmp_path / "f", Preprocess(scale=1 / 255, resize=8, crop=6))
    assert _check_shards(folder, batch_size=3) == {"folder"}


def test_in_memory_data_has_no_source_and_a_changed_file_is_an_error(tmp_path):
    ds = load_dataset(_images(), PRE)
    assert shard_source(ds, {0: np.arange(3)}) is None  # shipped by the driver instead
    path = tmp_path / "d.npz"
    np.savez_compressed(path, images=_images())
    source = shard_source(load_dataset(path, PRE), {0: np.arange(3)})
    np.savez_compressed(path, images=_images(9))
    with pytest.raises(RistrettoError, match="changed under the run"):
        source.read()
