"""CIFAR-10-style folders of JPEGs decoded once into memory, cached, split, augmented and resumed exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fairnas.data.memory_folder as memory_folder
from fairnas.data import DataError, DataNotFoundError, InMemoryImageFolderDataModule, split_indices
from fairnas.data.memory_folder import decode_image

CLASSES = ("bird", "airplane", "cat")  # written unsorted: labels follow the sorted names
N_TRAIN, N_TEST, SIZE = 12, 3, 32


def write_jpeg_tree(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, size: int = SIZE) -> Path:
    """root/train/<class>/NNNN.jpg and root/test/<class>/NNNN.jpg: smooth random images, quality 75."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
                image.save(root / split / cls / f"{i:04d}.jpg", quality=75)
    return root


def module(root: Path, **kwargs) -> InMemoryImageFolderDataModule:
    args = dict(num_classes=3, image_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), val_size=6)
    args.update(batch_size=4)
    return InMemoryImageFolderDataModule(str(root), **{**args, **kwargs})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_jpeg_tree(tmp_path / "cifar")


def test_images_labels_and_splits(tree: Path) -> None:
    dm = module(tree, seed=3)
    assert dm._decoded is None and not (tree / ".fairnas-cache").exists()  # construction reads nothing
    dm.setup()
    arrays = dm.arrays
    assert dm.classes == ["airplane", "bird", "cat"]
    assert arrays.train_images.dtype == torch.uint8 and arrays.train_images.shape == (3 * N_TRAIN, 3, SIZE, SIZE)
    assert arrays.train_labels.tolist() == [c for c in range(3) for _ in range(N_TRAIN)]
    assert arrays.test_labels.tolist() == [c for c in range(3) for _ in range(N_TEST)]
    # Every image is the decoded file, in class-then-name order.
    for index, (cls, i) in enumerate([("airplane", 0), ("bird", 5), ("cat", N_TRAIN - 1)]):
        position = [0, N_TRAIN + 5, 3 * N_TRAIN - 1][index]
        expected = np.asarray(Image.open(tree / "train" / cls / f"{i:04d}.jpg").convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(arrays.train_images[position].numpy(), expected)
    # The validation split is the seeded one of every in-memory dataset; augmentation is train-only.
    train_idx, val_idx = split_indices(3 * N_TRAIN, 6, 3)
    assert torch.equal(dm.val_dataset.images, arrays.train_images[val_idx])
    assert torch.equal(dm.train_dataset.images, arrays.train_images[train_idx])
    assert (dm.train_dataset.augment, dm.val_dataset.augment, dm.test_dataset.augment) == ("crop_flip", None, None)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (30, 6, 9)


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = module(tree)
    first.prepare_data()
    first.setup()
    cache = tree / ".fairnas-cache" / "images.npz"
    assert cache.is_file() and not list(cache.parent.glob("*.tmp"))
    calls = []
    original = memory_folder.decode_image
    monkeypatch.setattr(memory_folder, "decode_image", lambda *a: calls.append(a) or original(*a))
    again = module(tree)
    again.setup()
    assert calls == []  # read from the cache: no image decoded
    assert torch.equal(again.arrays.train_images, first.arrays.train_images)

    changed = tree / "train" / "cat" / "0003.jpg"
    Image.new("RGB", (SIZE, SIZE), (255, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))
    rebuilt = module(tree)
    rebuilt.setup()
    assert len(calls) == 3 * (N_TRAIN + N_TEST)
    assert rebuilt.arrays.train_images[2 * N_TRAIN + 3, 0].float().mean() > 240  # the new red image

    cache.write_bytes(b"not a zip file")  # a damaged cache is rebuilt, never trusted
    calls.clear()
    repaired = module(tree)
    repaired.setup()
    assert len(calls) == 3 * (N_TRAIN + N_TEST)
    assert torch.equal(repaired.arrays.train_images, rebuilt.arrays.train_images)


def test_cache_dir_puts_the_cache_elsewhere(tree: Path, tmp_path: Path) -> None:
    dm = module(tree, cache_dir=str(tmp_path / "elsewhere"))
    dm.setup()
    assert (tmp_path / "elsewhere" / "images.npz").is_file() and not (tree / ".fairnas-cache").exists()


def test_a_resumed_epoch_skips_exactly_the_batches_already_trained(tree: Path) -> None:
    full = module(tree, seed=1).train_dataloader()
    full.sampler.set_epoch(1)
    expected = list(full)
    dm = module(tree, seed=1)
    dm.resume_at(1, 2)
    resumed = dm.train_dataloader()
    resumed.sampler.set_epoch(1)
    rest = list(resumed)
    assert len(rest) == len(expected) - 2
    for (x, y), (ex, ey) in zip(rest, expected[2:], strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)  # same images, same augmentation draws


def test_bad_folders_get_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="no training folder"):
        module(tmp_path / "missing").setup()
    tree = write_jpeg_tree(tmp_path / "small", n_train=2, n_test=0)
    with pytest.raises(DataError, match="has 3 class folders, expected 10"):
        module(tree, num_classes=10).setup()
    Image.new("RGB", (16, 16)).save(tree / "train" / "cat" / "big.jpg")
    with pytest.raises(DataError, match=r"big\.jpg: the image is 16x16, expected 32x32"):
        module(tree, val_size=1).setup()
    (tree / "train" / "cat" / "big.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=r"big\.jpg: cannot be read as an image"):
        module(tree, val_size=1).setup()


def test_decode_image_grayscale(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 77).save(tmp_path / "g.png")
    array = decode_image(tmp_path / "g.png", 1, 8)
    assert array.shape == (1, 8, 8) and array.dtype == np.uint8 and int(array[0, 0, 0]) == 77
