"""Tests for fairnas.data: IDX IO, datamodules, batched augmentation, calibration, Hydra configs."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import fairnas.data.datamodules as dm_module
from fairnas.data import (
    BatchedTensorDataset,
    DataError,
    DataNotFoundError,
    FashionMNISTDataModule,
    IDXError,
    ImageFolderDataModule,
    ImageNetDataModule,
    MNISTDataModule,
    SyntheticDataModule,
    augment_batch,
    read_idx,
    split_indices,
    write_idx,
)
from fairnas.data.memory import default_crop_padding, random_crop

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "dataset"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 300, 50
MEAN, STD = FashionMNISTDataModule.MEAN[0], FashionMNISTDataModule.STD[0]


# ----------------------------------------------------------------------------- helpers
def make_images(n: int, seed: int, offset: int = 0) -> np.ndarray:
    """Random 28x28 uint8 images whose first two pixels encode a unique id (offset + i)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    ids = np.arange(offset, offset + n)
    images[:, 0, 0], images[:, 0, 1] = ids % 256, ids // 256
    return images


def image_ids(images: torch.Tensor) -> set[int]:
    """Recover the ids written by ``make_images`` from (N, 1, 28, 28) uint8 tensors."""
    return set((images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist())


def write_fashion_files(directory: Path) -> Path:
    """Write small Fashion-MNIST-like IDX files: train gzipped, test plain (both forms are read)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    write_idx(directory / "train-images-idx3-ubyte.gz", make_images(N_TRAIN, 2))
    write_idx(directory / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, N_TRAIN, dtype=np.uint8))
    write_idx(directory / "t10k-images-idx3-ubyte", make_images(N_TEST, 3, offset=10_000))
    write_idx(directory / "t10k-labels-idx1-ubyte", rng.integers(0, 10, N_TEST, dtype=np.uint8))
    return directory


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    return write_fashion_files(tmp_path / "fashion")


def fashion(data_dir: Path, **kwargs: object) -> FashionMNISTDataModule:
    defaults: dict[str, object] = {"download": False, "val_size": 50, "batch_size": 32}
    return FashionMNISTDataModule(data_dir=str(data_dir), **{**defaults, **kwargs})  # type: ignore[arg-type]


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return (x * STD + MEAN) * 255.0


def write_png_tree(root: Path, classes: dict[str, int], size: int = 20) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


# ----------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype is np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    back = read_idx(path)
    assert back.shape == (2, 3, 5)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, array)


def test_idx_truncated_and_corrupt(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "x", np.zeros((4, 28, 28), np.uint8))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(IDXError, match="truncated"):
        read_idx(truncated)
    short_header = tmp_path / "short"
    short_header.write_bytes(good.read_bytes()[:9])
    with pytest.raises(IDXError, match="truncated header"):
        read_idx(short_header)
    not_idx = tmp_path / "not_idx"
    not_idx.write_bytes(b"hello world")
    with pytest.raises(IDXError, match="not an IDX file"):
        read_idx(not_idx)
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(good.read_bytes())[:-20])
    with pytest.raises(IDXError, match="gzip"):
        read_idx(gz)


def test_mismatched_label_count_is_reported(tmp_path: Path) -> None:
    write_fashion_files(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(N_TEST - 1, np.uint8))
    with pytest.raises(IDXError, match="do not match"):
        fashion(tmp_path).setup()


# ----------------------------------------------------------------------------- split helpers
def test_split_indices() -> None:
    train, val = split_indices(100, 0.25, seed=3)
    assert len(val) == 25 and len(train) == 75
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    again = split_indices(100, 25, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert not torch.equal(val, split_indices(100, 25, seed=4)[1])
    with pytest.raises(DataError, match="no training data"):
        split_indices(100, 100, seed=0)
    with pytest.raises(DataError, match=r"val_size must be >= 0 \(a count\) or in \(0, 1\).*got -1"):
        FashionMNISTDataModule(val_size=-1)
    with pytest.raises(DataError, match="augment='rotate' is not one of"):
        FashionMNISTDataModule(augment="rotate")


# ----------------------------------------------------------------------------- Fashion-MNIST datamodule
def test_attributes_before_setup(fashion_dir: Path) -> None:
    dm = fashion(fashion_dir)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 28)
    assert dm._arrays is None  # construction reads nothing
    mnist = MNISTDataModule(data_dir=str(fashion_dir), download=False)
    assert (mnist.num_classes, mnist.in_channels, mnist.image_size) == (10, 1, 28)


def test_fashion_split_sizes_disjoint_and_seeded(fashion_dir: Path) -> None:
    dm = fashion(fashion_dir, seed=0)
    dm.setup()
    arrays = dm._arrays
    dm.setup()  # idempotent: nothing reloaded
    assert dm._arrays is arrays
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (250, 50, 50)
    train_ids, val_ids = image_ids(dm.train_dataset.images), image_ids(dm.val_dataset.images)
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(N_TRAIN))
    assert image_ids(dm.test_dataset.images) == set(range(10_000, 10_000 + N_TEST))  # val is not test

    same = fashion(fashion_dir, seed=0)
    other = fashion(fashion_dir, seed=1)
    assert torch.equal(same.val_dataset.images, dm.val_dataset.images)
    assert image_ids(other.val_dataset.images) != val_ids
    assert len(fashion(fashion_dir, val_size=0.2).val_dataset) == 60


def test_fashion_batches_normalised_and_drop_last(fashion_dir: Path) -> None:
    dm = fashion(fashion_dir)
    train = list(dm.train_dataloader())
    assert len(train) == 250 // 32
    assert all(x.shape == (32, 1, 28, 28) and y.shape == (32,) for x, y in train)
    x, y = train[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    val = list(dm.val_dataloader())
    assert [len(y) for _, y in val] == [32, 18]  # no drop_last for eval
    assert sum(len(y) for _, y in dm.test_dataloader()) == N_TEST
    # Eval batches are exactly the normalised stored images, in order.
    vx, vy = val[0]
    torch.testing.assert_close(unnormalise(vx), dm.val_dataset.images[:32].float(), atol=1e-3, rtol=0)
    assert torch.equal(vy, dm.val_dataset.labels[:32])


def test_train_order_seeded(fashion_dir: Path) -> None:
    first = [y for _, y in fashion(fashion_dir, seed=5).train_dataloader()]
    again = [y for _, y in fashion(fashion_dir, seed=5).train_dataloader()]
    other = [y for _, y in fashion(fashion_dir, seed=6).train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # The order is a function of (seed, epoch), as Lightning sets the epoch before each one.
    loader = fashion(fashion_dir, seed=5).train_dataloader()
    epoch0 = [y for _, y in loader]
    loader.sampler.set_epoch(1)
    epoch1 = [y for _, y in loader]
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, epoch1, strict=True))
    fresh = fashion(fashion_dir, seed=5).train_dataloader()
    fresh.sampler.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(epoch1, [y for _, y in fresh], strict=True))


def test_a_resumed_epoch_skips_exactly_the_batches_already_trained(fashion_dir: Path) -> None:
    full = fashion(fashion_dir, seed=3).train_dataloader()
    full.sampler.set_epoch(2)
    expected = [y for _, y in full]
    dm = fashion(fashion_dir, seed=3)
    dm.resume_at(2, 3)  # what the system hands over from a checkpoint after 3 batches of epoch 2
    resumed = dm.train_dataloader()
    resumed.sampler.set_epoch(2)
    rest = [y for _, y in resumed]
    assert len(rest) == len(expected) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, expected[3:], strict=True))
    resumed.sampler.set_epoch(3)  # the skip applies once: the next epoch is whole
    assert len([y for _, y in resumed]) == len(expected)


def test_split_seed_fixes_the_validation_split_while_seed_changes_the_order(fashion_dir: Path) -> None:
    # A ranking study trains each architecture with several seeds on ONE validation split.
    a, b = fashion(fashion_dir, seed=0, split_seed=7), fashion(fashion_dir, seed=1, split_seed=7)
    assert torch.equal(a.val_dataset.images, b.val_dataset.images)
    assert torch.equal(a.train_dataset.images, b.train_dataset.images)
    first_a, first_b = next(iter(a.train_dataloader()))[1], next(iter(b.train_dataloader()))[1]
    assert not torch.equal(first_a, first_b)  # the seed still changes the data order
    assert torch.equal(fashion(fashion_dir, seed=7).val_dataset.images, a.val_dataset.images)  # null: seed


def test_train_subset(fashion_dir: Path) -> None:
    full = fashion(fashion_dir)
    sub = fashion(fashion_dir, train_subset=40)
    assert len(sub.train_dataset) == 40 and len(sub.val_dataset) == 50
    assert torch.equal(sub.train_dataset.images, full.train_dataset.images[:40])
    assert torch.equal(sub.val_dataset.images, full.val_dataset.images)  # split unchanged
    assert len(sub.train_dataloader()) == 1
    with pytest.raises(DataError, match="fewer than batch_size"):
        fashion(fashion_dir, train_subset=10).train_dataloader()


def test_getitems_batched_fetch(fashion_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = fashion(fashion_dir, augment="crop_flip")
    loader = dm.train_dataloader()
    assert isinstance(loader, torch.utils.data.DataLoader)
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)  # so Lightning keeps it under DDP

    def per_sample(self: object, index: int) -> None:
        raise AssertionError("per-sample __getitem__ must not be used by the loaders")

    monkeypatch.setattr(BatchedTensorDataset, "__getitem__", per_sample)
    x, _ = next(iter(loader))
    assert x.shape == (32, 1, 28, 28)


def test_ddp_ranks_share_out_each_epoch_and_a_resume_skips_each_rank_s_trained_part() -> None:
    from fairnas.data.base import EpochShuffleSampler

    data = list(range(11))  # not a multiple of the 2 ranks: padded with the epoch's first index
    one = EpochShuffleSampler(data, seed=3)
    ranks = [EpochShuffleSampler(data, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for epoch in (0, 1):
        for sampler in (one, *ranks):
            sampler.set_epoch(epoch)
        order = list(one)
        assert sorted(order) == data and len(one) == 11
        shards = [list(r) for r in ranks]
        assert [len(r) for r in ranks] == [6, 6] and shards == [order[0::2], [*order[1::2], order[0]]]
    other_epoch = list(one)
    one.set_epoch(0)
    assert list(one) != other_epoch  # a new order every epoch
    # Resumed after 2 batches of 2 in epoch 1: each rank goes on with its own untrained indices, once.
    for sampler in ranks:
        sampler.set_epoch(1)
        full = list(sampler)
        sampler.resume_at(1, 4)
        assert list(sampler) == full[4:] and list(sampler) == full


def test_a_process_s_share_smaller_than_a_batch_and_a_resume_on_another_device_count_are_named() -> None:
    from types import SimpleNamespace

    dm = SyntheticDataModule(8, 3, 4, num_train=64, num_val=8, batch_size=48)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0)  # what the datamodule reads of a DDP trainer
    with pytest.raises(DataError, match="each of the 2 processes gets 32 of the 64 training samples, fewer than"):
        dm.train_dataloader()
    dm = SyntheticDataModule(8, 3, 4, num_train=64, num_val=8, batch_size=16)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0)
    # (position the system hands over, the datamodule's saved state, whether it warns)
    for (epoch, batches), saved, warns in [((0, 1), {"world_size": 2}, True),
                                           ((0, 1), {"world_size": 1}, False),
                                           ((0, 1), {"epoch": 0, "batches": 1}, False),  # older: one process
                                           ((1, 0), {"world_size": 2}, False)]:  # fmt: skip  # epoch's end: exact
        dm.resume_at(epoch, batches)
        dm.load_state_dict(saved)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loader = dm.train_dataloader()
        told = [str(w.message) for w in caught if "process(es)" in str(w.message)]
        assert bool(told) == warns, (saved, told)
        assert len(list(loader)) == 4 - batches  # the batches not trained yet, whatever the warning


def test_torchvision_layout(tmp_path: Path) -> None:
    write_fashion_files(tmp_path / "FashionMNIST" / "raw")
    dm = fashion(tmp_path)
    assert len(dm.test_dataset) == N_TEST


def test_missing_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dm_module, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    monkeypatch.setenv("FAIRNAS_DATA_DIR", str(tmp_path / "no-cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    dm = FashionMNISTDataModule(data_dir=str(empty), download=False)
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    assert isinstance(info.value, DataNotFoundError)
    message = str(info.value)
    for needle in (
        str(empty),
        str(tmp_path / "no-debian"),
        "apt-get install dataset-fashion-mnist",
        "dataset.data_dir=",
        "dataset.download=true",
        "download=False",
    ):
        assert needle in message
    with pytest.raises(DataNotFoundError) as mnist_info:
        MNISTDataModule(data_dir=str(empty), download=False).setup()
    assert "apt-get" not in str(mnist_info.value)


# ----------------------------------------------------------------------------- augmentation
def asymmetric_batch(n: int = 64, size: int = 28) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(0)).to(torch.uint8)


def test_default_crop_padding() -> None:
    assert default_crop_padding(32) == 4
    assert default_crop_padding(28) == 2


def test_augment_deterministic_and_shape_preserving() -> None:
    images = asymmetric_batch()
    for mode in ("flip", "crop", "crop_flip"):
        a = augment_batch(images, mode, torch.Generator().manual_seed(1))
        b = augment_batch(images, mode, torch.Generator().manual_seed(1))
        c = augment_batch(images, mode, torch.Generator().manual_seed(2))
        assert a.shape == images.shape and a.dtype == images.dtype
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment_batch(images, None, torch.Generator()) is images


def test_flip_really_flips() -> None:
    images = asymmetric_batch()
    out = augment_batch(images, "flip", torch.Generator().manual_seed(0))
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    kept = (out == images).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert 0 < int(flipped.sum()) < len(images)


def test_crop_matches_per_sample_reference() -> None:
    images = asymmetric_batch(16, 32)
    out = random_crop(images, 4, torch.Generator().manual_seed(3))
    offsets = torch.randint(0, 9, (2, 16), generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(16):
        r, c = int(offsets[0, i]), int(offsets[1, i])
        assert torch.equal(out[i], padded[i, :, r : r + 32, c : c + 32])


def test_datamodule_augmentation_train_only(fashion_dir: Path) -> None:
    a = fashion(fashion_dir, augment="crop_flip", seed=0)
    b = fashion(fashion_dir, augment="crop_flip", seed=0)
    xa, ya = next(iter(a.train_dataloader()))
    xb, yb = next(iter(b.train_dataloader()))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # With augmentation the batch differs from the plain normalised images of the same samples.
    plain = fashion(fashion_dir, augment=None, seed=0)
    xp, yp = next(iter(plain.train_dataloader()))
    assert torch.equal(ya, yp) and not torch.equal(xa, xp)
    # Eval splits are never augmented.
    vx, _ = next(iter(a.val_dataloader()))
    torch.testing.assert_close(unnormalise(vx), a.val_dataset.images[:32].float(), atol=1e-3, rtol=0)


def test_workers_deterministic(fashion_dir: Path) -> None:
    def first_batches() -> list[torch.Tensor]:
        loader = fashion(fashion_dir, augment="crop_flip", num_workers=2, seed=0).train_dataloader()
        return [x for x, _ in loader]

    a, b = first_batches(), first_batches()
    assert len(a) == 250 // 32
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------- calibration
def test_calibration_dataloader(fashion_dir: Path) -> None:
    dm = fashion(fashion_dir, augment="crop_flip")
    loader = dm.calibration_dataloader(num_batches=3, seed=7)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [32, 32, 32]
    again = list(dm.calibration_dataloader(num_batches=3, seed=7))
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(batches, again, strict=True))
    other = list(dm.calibration_dataloader(num_batches=3, seed=8))
    assert not torch.equal(batches[0][0], other[0][0])
    # Drawn from the training split only, and not augmented.
    stored = loader.dataset.images
    assert image_ids(stored) <= image_ids(dm.train_dataset.images)
    x = torch.cat([x for x, _ in batches])
    torch.testing.assert_close(unnormalise(x), stored.float(), atol=1e-3, rtol=0)
    with pytest.warns(UserWarning, match="using all"):
        assert len(dm.calibration_dataloader(num_batches=100, seed=0).dataset) == 250


# ----------------------------------------------------------------------------- synthetic
def test_synthetic() -> None:
    dm = SyntheticDataModule(image_size=16, channels=3, num_classes=5, num_train=64, num_val=20, batch_size=16)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (5, 3, 16)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y.max()) < 5
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (64, 20, 128)
    same = SyntheticDataModule(16, 3, 5, num_train=64, num_val=20, batch_size=16)
    other = SyntheticDataModule(16, 3, 5, num_train=64, num_val=20, batch_size=16, seed=1)
    assert torch.equal(same.train_dataset.images, dm.train_dataset.images)
    assert not torch.equal(other.train_dataset.images, dm.train_dataset.images)
    no_test = SyntheticDataModule(8, 1, 2, num_train=8, num_val=4, num_test=0, batch_size=4)
    with pytest.raises(DataError, match="no test split"):
        no_test.test_dataloader()
    with pytest.raises(DataError, match=r"set dataset.num_val \(now 4\), not val_size \(0.2\)"):
        SyntheticDataModule(8, 1, 2, num_train=8, num_val=4, val_size=0.2)


# ----------------------------------------------------------------------------- image folders
def test_image_folder(tmp_path: Path) -> None:
    write_png_tree(tmp_path / "train", {"cat": 5, "dog": 5})
    write_png_tree(tmp_path / "val", {"dog": 2})  # a test folder missing a class keeps train's labels
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, val_size=2, batch_size=4, num_workers=0)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (2, 3, 16)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (8, 2, 2)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    _, test_y = next(iter(dm.test_dataloader()))
    assert test_y.tolist() == [1, 1]
    calib = list(dm.calibration_dataloader(num_batches=1, seed=0))
    assert calib[0][0].shape == (4, 3, 16, 16)
    assert torch.equal(calib[0][0], next(iter(dm.calibration_dataloader(num_batches=1, seed=0)))[0])


def test_image_folder_without_train_dir_and_errors(tmp_path: Path) -> None:
    write_png_tree(tmp_path / "flat", {"a": 3, "b": 3, "c": 3})
    dm = ImageFolderDataModule(str(tmp_path / "flat"), image_size=8, val_size=3, batch_size=2, num_workers=0)
    assert dm.num_classes == 3 and len(dm.train_dataset) == 6
    with pytest.raises(DataError, match="no test split"):
        dm.test_dataloader()
    with pytest.raises(DataNotFoundError, match="missing"):
        ImageFolderDataModule(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="empty"):
        ImageFolderDataModule(str(tmp_path / "empty"))


def test_imagenet_warns_on_class_count(tmp_path: Path) -> None:
    write_png_tree(tmp_path / "train", {"n01": 2, "n02": 2})
    with pytest.warns(UserWarning, match="expected 1000"):
        ImageNetDataModule(str(tmp_path), num_workers=0)


# ----------------------------------------------------------------------------- Hydra configs
ROOT_CFG = {
    "seed": 0,
    "search_space": {"input_size": 32, "in_channels": 3, "num_classes": 10},
    "paths": {"data_dir": None},
}


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_dataset_configs_instantiate(path: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR.parent), version_base="1.3"):
        dataset = compose("train", overrides=[f"dataset={path.stem}"]).dataset  # with its base, as train.py sees it
    cfg = OmegaConf.merge(OmegaConf.create(ROOT_CFG), {"dataset": dataset})
    if path.stem in ("imagenet", "image_folder", "cifar10_folder"):
        assert OmegaConf.is_missing(cfg.dataset, "root")  # must be given: dataset.root=/path
        write_png_tree(tmp_path / "train", {"a": 2, "b": 2}, size=8)
        cfg.dataset.root = str(tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.dataset.seed == 0
    if path.stem == "imagenet":
        with pytest.warns(UserWarning, match="expected 1000"):
            dm = instantiate(cfg.dataset)
    else:
        dm = instantiate(cfg.dataset)  # constructing reads/downloads nothing
    assert dm.num_classes >= 2 and dm.in_channels in (1, 3) and dm.image_size > 0
    if path.stem == "synthetic":
        assert (dm.image_size, dm.in_channels, dm.num_classes) == (32, 3, 10)
        x, _ = next(iter(dm.train_dataloader()))
        assert x.shape == (128, 3, 32, 32)


# ----------------------------------------------------------------------------- real data
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist() -> None:
    dm = FashionMNISTDataModule(data_dir=str(DEBIAN_DIR), download=False)
    dm.setup()
    assert len(dm.train_dataset) + len(dm.val_dataset) == 60_000
    assert len(dm.val_dataset) == 5000
    assert len(dm.test_dataset) == 10_000
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (128, 1, 28, 28) and int(y.max()) == 9
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2


def test_an_image_folder_with_one_class_is_refused(tmp_path: Path) -> None:
    write_png_tree(tmp_path / "train", {"cat": 4})
    with pytest.raises(DataError, match=r"train has 1 class folder \(cat\): classification needs at least 2"):
        ImageFolderDataModule(str(tmp_path), num_workers=0)


def _damage(tmp_path: Path) -> dict[str, Path]:
    write_png_tree(tmp_path / "train", {"cat": 4, "dog": 4})
    cat = sorted((tmp_path / "train" / "cat").iterdir())
    truncated, text = cat[0], cat[1]
    truncated.write_bytes(truncated.read_bytes()[:60])
    text.write_text("not an image")
    return {"truncated": truncated, "text": text}


def test_truncated_and_non_image_files_are_named_before_training(tmp_path: Path) -> None:
    bad = _damage(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, val_size=2, batch_size=2, num_workers=2)
    with pytest.raises(DataError, match="2 of 8 image files cannot be decoded") as err:
        dm.setup("fit")
    assert str(bad["truncated"]) in str(err.value) and str(bad["text"]) in str(err.value)


def test_without_the_check_a_bad_image_stops_with_its_path_when_loaded(tmp_path: Path) -> None:
    from fairnas.errors import _without_worker_traceback

    bad = _damage(tmp_path)
    dm = ImageFolderDataModule(
        str(tmp_path), image_size=8, val_size=2, batch_size=6, num_workers=1, check_images=False, augment=None
    )
    dm.setup("fit")  # nothing read yet
    with pytest.raises(DataError) as err:  # raised in a worker, re-raised here with the worker's traceback
        next(iter(dm.train_dataloader()))
    message = _without_worker_traceback(str(err.value))
    assert message.startswith("1 image files cannot be decoded") and "Traceback" not in message
    assert str(bad["truncated"]) in message or str(bad["text"]) in message
