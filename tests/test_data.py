"""ristretto_onnx.data: preprocessing values, dataset sources, streaming and index views."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ristretto_onnx.data import (ArrayDataset, FolderDataset, Preprocess, load_dataset,
                                 parse_number, preprocess_from_cli)
from ristretto_onnx.errors import RistrettoError

CIFAR_MEAN = np.array([0.485, 0.456, 0.406])
CIFAR_STD = np.array([0.229, 0.224, 0.225])


# ---- Preprocess: text forms


@pytest.mark.parametrize("pre, text", [
    (Preprocess(), "none"),
    (Preprocess(scale=1 / 255, add_channel_axis=True), "scale=1/255;add_channel_axis"),
    (Preprocess(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
     "scale=1/255;mean=0.485,0.456,0.406;std=0.229,0.224,0.225"),
    (Preprocess(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), resize=256, crop=224),
     "mean=123.675,116.28,103.53;std=58.395,57.12,57.375;resize=256;crop=224"),
    (Preprocess(scale=0.3, mean=(0.0,)), "scale=0.3;mean=0"),
    (Preprocess(scale=0.5), "scale=1/2"),
])
def test_str_and_parse_round_trip(pre, text):
    assert str(pre) == text
    assert Preprocess.parse(text) == pre


def test_parse_accepts_spaces_and_dashes():
    assert Preprocess.parse("scale=1/255 add-channel-axis") == Preprocess(scale=1 / 255,
                                                                          add_channel_axis=True)


@pytest.mark.parametrize("text, message", [
    ("scale=abc", "'abc' is not a number or a fraction like 1/255"),
    ("scale=1/0", "is not a number or a fraction"),
    ("gamma=2", "cannot read 'gamma=2'"),
    ("std=1,0,1", "must not contain 0"),
    ("crop=22.5", "positive whole number"),
    ("mean=1,2,3;std=1,2", "mean has 3 values but std has 2"),
])
def test_parse_errors_are_one_line(text, message):
    with pytest.raises(RistrettoError, match=message) as err:
        Preprocess.parse(text)
    assert "\n" not in str(err.value)


def test_parse_number_fractions():
    assert parse_number("1/255") == 1 / 255
    assert parse_number(" 0.25 ") == 0.25
    assert parse_number("-3e-2") == -0.03
    with pytest.raises(RistrettoError, match="--scale: 'x/2'"):
        parse_number("x/2", "--scale")
    with pytest.raises(RistrettoError, match="not a finite number"):
        parse_number("inf")


def test_preprocess_from_cli_overrides_base_and_clears_with_none():
    base = Preprocess(scale=1 / 255, mean=(0.5,), std=(0.25,), add_channel_axis=True)
    pre = preprocess_from_cli(mean="0.1", std="none", crop="24", base=base)
    assert pre == Preprocess(scale=1 / 255, mean=(0.1,), crop=24, add_channel_axis=True)
    assert preprocess_from_cli(scale="1/255", mean="0.485,0.456,0.406") == Preprocess(
        scale=1 / 255, mean=(0.485, 0.456, 0.406))
    assert preprocess_from_cli() == Preprocess()


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": "0"}, "--scale: must not be 0"),
    ({"mean": "0.1,,0.2"}, "--mean: expected comma-separated numbers"),
    ({"std": "1,0"}, "--std: must not contain 0"),
    ({"resize": "-3"}, "--resize: expected a positive whole number"),
    ({"crop": "big"}, "--crop: 'big' is not a number"),
])
def test_preprocess_from_cli_errors(kwargs, message):
    with pytest.raises(RistrettoError, match=message):
        preprocess_from_cli(**kwargs)


# ---- Preprocess: values


def test_scale_1_over_255_matches_the_readme_formula_exactly():
    levels = np.arange(256, dtype=np.uint8)
    table = Preprocess(scale=1 / 255).table(1)[0]
    np.testing.assert_array_equal(table, levels.astype(np.float32) / 255)


def test_uint8_nhwc_becomes_nchw_with_the_exact_per_channel_formula():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    pre = Preprocess(scale=1 / 255, mean=tuple(CIFAR_MEAN), std=tuple(CIFAR_STD))
    out = pre.apply(images)
    expected = ((images / 255 - CIFAR_MEAN) / CIFAR_STD).transpose(0, 3, 1, 2).astype(np.float32)
    assert out.dtype == np.float32 and out.shape == (5, 3, 4, 6)
    np.testing.assert_array_equal(out, expected)


def test_grayscale_channel_axis_and_identity():
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert Preprocess().apply(images).shape == (2, 3, 3)
    out = Preprocess(add_channel_axis=True).apply(images)
    assert out.shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(out[:, 0], images.astype(np.float32))


def test_float_data_is_taken_as_model_layout():
    x = np.random.default_rng(1).standard_normal((4, 2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(Preprocess().apply(x), x)
    out = Preprocess(mean=(1.0, 2.0), std=(2.0, 4.0)).apply(x)
    np.testing.assert_allclose(out[:, 1], (x[:, 1] - 2) / 4, rtol=1e-6)
    with pytest.raises(RistrettoError, match="resize/crop need raw uint8"):
        Preprocess(crop=2).apply(x)


def test_crop_of_uint8_array_is_centered_like_the_readme():
    images = np.random.default_rng(2).integers(0, 256, (2, 9, 12, 3), dtype=np.uint8)
    out = Preprocess(crop=5).apply(images)
    top, left = (9 - 5) // 2, (12 - 5) // 2
    np.testing.assert_array_equal(out, images[:, top:top + 5, left:left + 5].transpose(0, 3, 1, 2))


def test_channel_mismatch_is_reported_against_the_data():
    images = np.zeros((3, 8, 8), dtype=np.uint8)
    with pytest.raises(RistrettoError, match="mean has 3 values but .* has 1 channel"):
        load_dataset(images, Preprocess(mean=(0.1, 0.2, 0.3), add_channel_axis=True))
    rgb = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(RistrettoError, match="std has 2 values but .* has 3 channels"):
        load_dataset(rgb, Preprocess(std=(1.0, 2.0)))
    load_dataset(rgb, Preprocess(mean=(0.5,)))  # one value applies to every channel


# ---- Dataset views and batching


@pytest.fixture
def small() -> ArrayDataset:
    images = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2)
    return load_dataset(images, Preprocess(add_channel_axis=True), labels=np.arange(10) % 3)


def test_batches_stream_in_order_with_a_short_last_batch(small):
    batches = list(small.batches(4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and x.shape == (10, 1, 2, 2)
    np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(10) * 4)
    np.testing.assert_array_equal(y, small.labels)
    assert small.labels.dtype == np.int64
    assert small.sample_shape == (1, 2, 2)
    with pytest.raises(RistrettoError, match="batch size must be a positive integer"):
        next(small.batches(0))


def test_subset_split_take_are_deterministic_disjoint_and_ordered(small):
    a, b = small.split(4, seed=7)
    assert len(a) == 4 and len(b) == 6
    first = np.concatenate([x for x, _ in a.batches(100)])[:, 0, 0, 0] // 4
    rest = np.concatenate([x for x, _ in b.batches(100)])[:, 0, 0, 0] // 4
    assert set(first).isdisjoint(rest) and sorted({*first, *rest}) == list(range(10))
    assert list(first) == sorted(first)
    np.testing.assert_array_equal(a.labels, first.astype(np.int64) % 3)
    again = small.subset(4, seed=7)
    np.testing.assert_array_equal(next(again.batches(10))[0], next(a.batches(10))[0])
    other = next(small.subset(4, seed=8).batches(10))[0][:, 0, 0, 0] // 4
    assert not np.array_equal(other, first)
    assert len(small.take(3)) == 3 and len(small.take(50)) == 10
    np.testing.assert_array_equal(next(b.take(2).batches(5))[0], next(b.batches(2))[0])
    with pytest.raises(RistrettoError, match="asked for 11 items but .* has 10"):
        small.subset(11)


def test_with_labels_and_with_preprocess(small):
    view = small.take(3).with_labels([2, 1, 0])
    np.testing.assert_array_equal(view.labels, [2, 1, 0])
    np.testing.assert_array_equal(small.labels[:3], [0, 1, 2])  # the original is untouched
    scaled = small.with_preprocess(Preprocess(scale=0.5, add_channel_axis=True))
    np.testing.assert_array_equal(next(scaled.batches(10))[0], next(small.batches(10))[0] * 0.5)


def test_iterable_of_batches_and_unlabelled_arrays():
    rng = np.random.default_rng(3)
    parts = [(rng.standard_normal((3, 1, 2, 2)).astype(np.float32), np.array([1, 2, 3]))
             for _ in range(3)]
    ds = load_dataset(iter(parts))
    assert len(ds) == 9
    np.testing.assert_array_equal(ds.labels, [1, 2, 3] * 3)
    np.testing.assert_array_equal(next(ds.batches(9))[0], np.concatenate([p[0] for p in parts]))
    assert load_dataset(np.zeros((2, 3, 4, 4), np.float32)).labels is None


@pytest.mark.parametrize("source, message", [
    ("/no/such/file.npz", "dataset not found: /no/such/file.npz"),
    (42, "cannot load a dataset from int"),
    (np.zeros((4, 2, 2), dtype=np.int32), "must be uint8 .* or float"),
])
def test_bad_sources(source, message):
    with pytest.raises(RistrettoError, match=message):
        load_dataset(source)


def test_labels_must_match_the_images():
    with pytest.raises(RistrettoError, match=r"labels have shape \(3,\), expected \(4,\)"):
        load_dataset(np.zeros((4, 2, 2), np.uint8), labels=[0, 1, 2])


# ---- .npz files


def _write_npz(path: Path, compressed: bool, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_uint8_with_labels(tmp_path, compressed):
    images = np.random.default_rng(4).integers(0, 256, (6, 5, 5), dtype=np.uint8)
    path = _write_npz(tmp_path / "d.npz", compressed, images=images, labels=np.arange(6))
    before = path.read_bytes()
    ds = load_dataset(path, Preprocess(scale=1 / 255, add_channel_axis=True))
    assert isinstance(ds.images, np.memmap) != compressed  # stored members are memory-mapped
    x, y = next(ds.batches(6))
    np.testing.assert_array_equal(x, images[:, None].astype(np.float32) / 255)
    np.testing.assert_array_equal(y, np.arange(6))
    assert path.read_bytes() == before


def test_npz_float_in_model_layout_and_missing_images(tmp_path):
    x = np.random.default_rng(5).standard_normal((3, 2, 4, 4)).astype(np.float32)
    ds = load_dataset(_write_npz(tmp_path / "f.npz", False, images=x))
    np.testing.assert_array_equal(next(ds.batches(3))[0], x)
    assert ds.labels is None
    with pytest.raises(RistrettoError, match="has no 'images' array .*data"):
        load_dataset(_write_npz(tmp_path / "g.npz", False, data=x))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(RistrettoError, match="cannot read"):
        load_dataset(tmp_path / "bad.npz")


def test_npy_is_memory_mapped(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2, 2, 3), np.uint8))
    ds = load_dataset(tmp_path / "x.npy", labels=[0, 1, 0, 1])
    assert isinstance(ds.images, np.memmap)
    assert next(ds.batches(4))[0].shape == (4, 3, 2, 2)


# ---- image folders


def _image_folder(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> Path:
    rng = np.random.default_rng(6)
    for cls, shapes in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(shapes):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"img{i}.png")
    (root / next(iter(sizes)) / "notes.txt").write_text("not an image")
    return root


def test_folder_classes_sorted_and_decoded_per_batch(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "imgs", {"b_class": [(6, 6)] * 2, "a_class": [(6, 6)] * 3})
    opened = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(p) or original(p, *a, **k))
    ds = load_dataset(root, Preprocess(scale=1 / 255))
    assert isinstance(ds, FolderDataset) and opened == []  # nothing decoded up front
    assert ds.classes == ("a_class", "b_class") and ds.num_classes == 2
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1])
    x, y = next(ds.batches(2))
    assert len(opened) == 2 and x.shape == (2, 3, 6, 6)
    expected = np.asarray(Image.open(root / "a_class" / "img0.png").convert("RGB"))
    np.testing.assert_array_equal(x[0], expected.transpose(2, 0, 1).astype(np.float32) / 255)


def test_folder_resize_then_center_crop_matches_pillow_by_hand(tmp_path):
    root = _image_folder(tmp_path / "imgs", {"a": [(40, 30)], "b_class": [(30, 50)]})
    pre = Preprocess(mean=(10.0, 20.0, 30.0), std=(2.0, 3.0, 4.0), resize=20, crop=16)
    x, _ = next(load_dataset(root, pre).batches(2))
    for i, path in enumerate([root / "a" / "img0.png", root / "b_class" / "img0.png"]):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        size = (int(20 * w / h), 20) if w > h else (20, int(20 * h / w))
        img = img.resize(size, Image.Resampling.BILINEAR)
        left, top = (img.size[0] - 16) // 2, (img.size[1] - 16) // 2
        crop = np.asarray(img.crop((left, top, left + 16, top + 16)), dtype=np.float64)
        expected = ((crop - [10, 20, 30]) / [2, 3, 4]).transpose(2, 0, 1).astype(np.float32)
        np.testing.assert_array_equal(x[i], expected)


def test_folder_errors_and_flat_folders(tmp_path):
    root = _image_folder(tmp_path / "imgs", {"a": [(6, 6), (7, 6)]})
    with pytest.raises(RistrettoError, match="different sizes .* set a crop"):
        next(load_dataset(root).batches(2))
    with pytest.raises(RistrettoError, match="crop 8 is larger than an image of 6x6"):
        next(load_dataset(root, Preprocess(crop=8)).batches(2))
    gray = load_dataset(root, Preprocess(crop=6, add_channel_axis=True))
    assert next(gray.batches(2))[0].shape == (2, 1, 6, 6)
    flat = load_dataset(root / "a")
    assert flat.labels is None and len(flat) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(RistrettoError, match="no images"):
        load_dataset(tmp_path / "empty")


# ---- the real zoo data


def test_zoo_mnist_test_is_float_in_unit_range(zoo_env):
    ds = load_dataset("zoo:mnist-test")
    assert len(ds) == 10000 and ds.name == "zoo:mnist-test"
    x, y = next(ds.batches(10000))
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert y.dtype == np.int64 and list(np.bincount(y)[:3]) == [980, 1135, 1032]
    raw = np.load(zoo_env / "datasets/mnist/test.npz")["images"]
    np.testing.assert_array_equal(x, raw[:, None].astype(np.float32) / 255)


def test_zoo_cifar_normalization_is_exact_per_channel(zoo_env):
    ds = load_dataset("zoo:cifar10-test").take(500)
    x, y = next(ds.batches(500))
    raw = np.load(zoo_env / "datasets/cifar10/test.npz")["images"][:500]
    expected = ((raw / 255 - CIFAR_MEAN) / CIFAR_STD).transpose(0, 3, 1, 2).astype(np.float32)
    np.testing.assert_array_equal(x, expected)
    # each channel really is normalized with its own mean and std
    for c in range(3):
        assert x[:, c].min() == np.float32((0 - CIFAR_MEAN[c]) / CIFAR_STD[c])


def test_zoo_imagenet_sample_reproduces_the_readme_preprocessing(zoo_env):
    ds = load_dataset("zoo:imagenet-sample")
    assert len(ds) == 1000 and ds.num_classes == 1000
    synsets = (zoo_env / "datasets/imagenet-sample-synsets.txt").read_text().split()
    assert list(ds.classes) == synsets
    index = synsets.index("n01443537")
    assert index == 1
    x = next(ds.take(2).batches(2))[0][1]
    path = next((zoo_env / "datasets/imagenet-sample/n01443537").iterdir())
    img = Image.open(path).convert("RGB")
    w, h = img.size
    assert min(w, h) == 256  # stored with the short side already at 256: no resampling
    left, top = (w - 224) // 2, (h - 224) // 2
    crop = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float64)
    expected = ((crop - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375])
    np.testing.assert_array_equal(x, expected.transpose(2, 0, 1).astype(np.float32))
    assert ds.labels[index] == index


def test_zoo_model_name_gives_its_test_set(zoo_env):
    ds = load_dataset("zoo:resnet20-cifar10")
    assert ds.name == "zoo:cifar10-test" and ds.sample_shape == (3, 32, 32)
    override = load_dataset("zoo:lenet-mnist", Preprocess(add_channel_axis=True))
    assert next(override.take(1).batches(1))[0].max() > 1  # raw 0..255, preprocessing replaced


def test_npz_member_offsets_survive_extra_fields(tmp_path):
    """Stored members written by other zip tools (with extra fields) are still mapped right."""
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    path = tmp_path / "extra.npz"
    np.save(tmp_path / "images.npy", images)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo("images.npy")
        info.extra = b"\xfe\xca\x04\x00abcd"
        zf.writestr(info, (tmp_path / "images.npy").read_bytes())
    ds = load_dataset(path)
    assert isinstance(ds.images, np.memmap)
    np.testing.assert_array_equal(ds.images, images)
