"""Datasets, subsets, augmentation and the one preprocessing path (odd images included)."""

from __future__ import annotations

import gzip
import io
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from backfill import datasets, images
from backfill.augmentation import augment_batch, parse_views, view_images
from backfill.datasets import DatasetNotFoundError, ImageDataset, load_dataset, select_classes, subsample_per_class
from backfill.images import ImageLoadError, load_image, normalize_uint8, preprocess


# ------------------------------------------------------------------------------------------------ loaders
def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fmnist(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


@pytest.fixture
def fake_cifar(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 30)):
        np.savez(tmp_path / f"{split}.npz", images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 labels=(np.arange(n) % 6).astype(np.uint8))
    (tmp_path / "classes.json").write_text(json.dumps({"classes": [f"c{i}" for i in range(6)]}))
    return tmp_path


def test_fashion_mnist_from_idx_files(fake_fmnist):
    ds = load_dataset("fashion_mnist", "train", root=fake_fmnist)
    assert ds.images.shape == (40, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert ds.class_names[0] == "T-shirt/top" and len(ds.class_names) == 10
    assert len(load_dataset("fashion_mnist", "test", root=fake_fmnist)) == 20


def test_fashion_mnist_env_variable(fake_fmnist, monkeypatch):
    monkeypatch.setenv("BACKFILL_FASHION_MNIST", str(fake_fmnist))
    assert len(load_dataset("fashion_mnist", "test")) == 20


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        datasets.read_idx(path)


@pytest.mark.debian_fashion_mnist
def test_debian_idx_matches_bundled_test_split():
    ds = load_dataset("fashion_mnist", "test")
    with np.load(datasets.FASHION_MNIST_BUNDLE) as z:
        assert np.array_equal(z["images"], ds.images[..., 0])
        assert np.array_equal(z["labels"], ds.labels)
        assert [str(c) for c in z["class_names"]] == ds.class_names


def test_bundle_serves_test_split_when_idx_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.delenv("BACKFILL_FASHION_MNIST", raising=False)
    ds = load_dataset("fashion_mnist", "test")
    assert ds.images.shape == (10000, 28, 28, 1) and ds.source.endswith("fashion_mnist_test.npz")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", "train")


def test_cifar_directory_layout(fake_cifar):
    ds = load_dataset("cifar100", "train", root=fake_cifar)
    assert ds.images.shape == (60, 32, 32, 3) and ds.labels.dtype == np.int64
    assert ds.class_names == [f"c{i}" for i in range(6)] and ds.name == "cifar100" and ds.split == "train"


def test_cifar_missing_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("BACKFILL_CIFAR100", raising=False)
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)) as info:
        load_dataset("cifar100", "test", root=tmp_path)
    assert "--download" in str(info.value)


def test_bad_name_and_split():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist", "train")
    with pytest.raises(ValueError, match="split"):
        load_dataset("cifar100", "val")


# -------------------------------------------------------------------------------------- subsets/sampling
def _toy(n_per_class=10, classes=4):
    labels = np.repeat(np.arange(classes), n_per_class)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2)
    return ImageDataset(images, labels, [f"c{i}" for i in range(classes)], "toy", "train")


def test_select_first_k_classes_keeps_global_labels():
    sub = select_classes(_toy(), 2)
    assert sorted(set(sub.labels.tolist())) == [0, 1] and len(sub) == 20 and sub.num_classes == 4
    sub = select_classes(_toy(), [3])
    assert set(sub.labels.tolist()) == {3}
    with pytest.raises(ValueError):
        select_classes(_toy(), 5)


def test_subsample_per_class_is_deterministic_and_balanced():
    a, b, c = (subsample_per_class(_toy(), 3, seed=s) for s in (1, 1, 2))
    assert np.bincount(a.labels).tolist() == [3, 3, 3, 3]
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert np.all(np.diff(a.images[:, 0, 0, 0].astype(int)) > 0)  # original order kept


# ---------------------------------------------------------------------------------------- augmentation
def test_augment_crop_shifts_content_and_keeps_shape():
    x = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(50, 1, 1, 1)
    out = augment_batch(x, "fashion_mnist", torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    # each output is a translated window of the zero-padded input (pad 2): some shifted, none garbage
    padded = torch.nn.functional.pad(x[0, 0], (2, 2, 2, 2))
    windows = {padded[dy:dy + 8, dx:dx + 8].numpy().tobytes() for dy in range(5) for dx in range(5)}
    assert all(o[0].numpy().tobytes() in windows for o in out)
    assert len({o.numpy().tobytes() for o in out}) > 5


def test_augment_flip_only_for_cifar():
    x = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(1, 3, 4, 4).repeat(64, 1, 1, 1)
    out = augment_batch(x, "cifar100", torch.Generator().manual_seed(0))
    flipped = torch.nn.functional.pad(x[0], (4, 4, 4, 4)).flip(2)
    windows = {flipped[:, dy:dy + 4, dx:dx + 4].numpy().tobytes() for dy in range(9) for dx in range(9)}
    assert any(o.numpy().tobytes() in windows for o in out)
    # Fashion-MNIST: never mirrored (a left-right asymmetric row stays increasing)
    row = torch.arange(28, dtype=torch.uint8).view(1, 1, 1, 28).repeat(64, 1, 28, 1) + 1
    out = augment_batch(row, "fashion_mnist", torch.Generator().manual_seed(0))
    mid = out[:, 0, 14].int()
    nz = [r[r > 0] for r in mid]
    assert all(torch.all(torch.diff(v) > 0) for v in nz)


def test_augment_is_reproducible():
    x = torch.randint(0, 255, (16, 3, 32, 32), dtype=torch.uint8)
    a = augment_batch(x, "cifar100", torch.Generator().manual_seed(5))
    b = augment_batch(x, "cifar100", torch.Generator().manual_seed(5))
    assert torch.equal(a, b)



def test_views_of_a_split_are_fixed_transformations_of_each_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4100, 6, 6, 3), dtype=np.uint8)  # more than one chunk of 4,096
    assert view_images(images, "clean", "cifar100") is images
    np.testing.assert_array_equal(view_images(images, "flip", "cifar100"), images[:, :, ::-1])
    crop = view_images(images, "crop", "cifar100")
    assert crop.shape == images.shape and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, view_images(images, "crop", "cifar100"))  # seeded: the same every time
    assert not np.array_equal(crop, view_images(images, "crop", "cifar100", seed=1))
    # Each image is one window of its zero-padded (pad 4), possibly mirrored self, including the last chunk's.
    for i in (0, 1, 4099):
        padded = np.pad(images[i], ((4, 4), (4, 4), (0, 0)))
        windows = {w[dy:dy + 6, dx:dx + 6].tobytes() for w in (padded, padded[:, ::-1])
                   for dy in range(9) for dx in range(9)}
        assert crop[i].tobytes() in windows
    assert parse_views("flip+crop") == ["flip", "crop"]
    with pytest.raises(ValueError, match="unknown view 'mirror'"):
        parse_views("flip+mirror")
    with pytest.raises(ValueError, match="named twice"):
        parse_views("crop+crop")

# --------------------------------------------------------------------------------------- preprocessing
def _png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr"])
@pytest.mark.parametrize("dataset", ["cifar100", "fashion_mnist"])
def test_preprocess_any_mode(mode, dataset):
    image = Image.new(mode, (40, 30))
    out = preprocess([image], dataset)
    spec = datasets.DATASETS[dataset]
    assert out.shape == (1, spec.channels, spec.size, spec.size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # fully transparent black
    out = preprocess(image, "cifar100")
    white = normalize_uint8(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), "cifar100")
    assert torch.allclose(out[:, :, 0, 0], white[:, :, 0, 0])


def test_sixteen_bit_is_scaled_not_clipped():
    arr = np.full((28, 28), 32768, dtype=np.uint16)
    image = Image.fromarray(arr)
    assert image.mode == "I;16"
    out = images.to_model_mode(image, "L")
    assert abs(int(np.asarray(out)[0, 0]) - 128) <= 1


@pytest.mark.parametrize("size", [(1, 1), (4000, 3000), (3000, 17)])
def test_preprocess_any_size(size):
    out = preprocess(_png_bytes(Image.new("RGB", size, (200, 10, 10))), "cifar100")
    assert out.shape == (1, 3, 32, 32)
    expected = normalize_uint8(torch.tensor([200, 10, 10], dtype=torch.uint8).view(1, 3, 1, 1), "cifar100")
    assert torch.allclose(out[0, :, 16, 16], expected[0, :, 0, 0], atol=0.05)


def test_centre_crop_keeps_aspect():
    arr = np.zeros((10, 30), dtype=np.uint8)
    arr[:, 10:20] = 255  # the centre square is white, the sides black
    out = np.asarray(images.resize_to_model(Image.fromarray(arr, "L"), 28))
    # only the white centre square is kept (bicubic support softens the outermost column a little)
    assert out[:, 1:-1].min() == 255 and out.mean() > 240


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue()).size == (20, 40)


def test_dataset_arrays_and_uploads_give_the_same_tensor():
    ds = load_dataset("fashion_mnist", "test")
    imgs = ds.images[:4]
    from_array = preprocess(imgs, "fashion_mnist")
    from_png = preprocess([_png_bytes(Image.fromarray(a[..., 0], "L")) for a in imgs], "fashion_mnist")
    assert torch.equal(from_array, from_png)
    # RGB arrays at another size go through the PIL path
    rgb = np.repeat(np.repeat(np.repeat(imgs, 3, axis=3), 2, axis=1), 2, axis=2)
    assert preprocess(rgb, "fashion_mnist").shape == (4, 1, 28, 28)


def test_single_image_arrays_are_accepted():
    rgba = np.zeros((20, 30, 4), np.uint8)  # transparent -> white
    out = preprocess([rgba, np.full((5, 5), 255, np.uint8), np.zeros((28, 28, 1), np.uint8)], "fashion_mnist")
    white = normalize_uint8(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8), "fashion_mnist")
    assert torch.allclose(out[0], white[0, :, :1, :1].expand(1, 28, 28))
    assert torch.allclose(out[1], white[0, :, :1, :1].expand(1, 28, 28))
    assert out[2].max() < 0
    with pytest.raises(ImageLoadError, match="uint8"):
        load_image(np.zeros((4, 4), np.float32))


def test_sample_pngs_load_and_preprocess():
    paths = sorted((datasets.ASSETS_DIR / "samples").glob("*.png"))
    assert 6 <= len(paths) <= 8
    assert preprocess(paths, "fashion_mnist").shape == (len(paths), 1, 28, 28)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"hello, I am a text file\n" * 10, "not a recognised image"),
        (_png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:200], "truncated or corrupt"),
        (_png_bytes(Image.effect_noise((64, 64), 50))[:300], "truncated or corrupt"),
    ],
)
def test_bad_inputs_raise_image_load_error(payload, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(payload)
    with pytest.raises(ValueError):  # ImageLoadError is a ValueError: the CLI/app catch it as a user error
        preprocess([payload], "cifar100")


def test_lazily_opened_truncated_pil_image():
    lazy = Image.open(io.BytesIO(_png_bytes(Image.effect_noise((64, 64), 50))[:300]))
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(lazy)


@pytest.mark.parametrize("size", [(8000, 6000), (10000, 10000)])
def test_decompression_bomb_is_refused(size):
    # Small PNGs that expand to 48 MP (over our 40 MP limit) and 100 MP (over PIL's own warning limit):
    # both refused before the pixels are decoded.
    big = _png_bytes(Image.new("1", size))
    assert len(big) < 100_000
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(big)


def test_missing_path_and_wrong_type(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="cannot load"):
        load_image(3.5)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.txt"):
        load_image(text)
