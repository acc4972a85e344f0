"""Concrete in-memory datamodules: Fashion-MNIST, MNIST, CIFAR-10/100 and synthetic data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from fairnas.data.base import STREAM_SYNTHETIC, derive_seed
from fairnas.data.idx import IDXError, find_idx_file, read_idx
from fairnas.data.memory import InMemoryArrays, InMemoryDataModule
from fairnas.errors import DataError, DataNotFoundError

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "default_data_root",
]

# Where the Debian package ``dataset-fashion-mnist`` installs the gzipped IDX files.
# Read at call time (not bound as a default) so tests can monkeypatch it.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Download/cache root when no ``data_dir`` is given; ``$FAIRNAS_DATA_DIR`` overrides it.
DEFAULT_DATA_ROOT = "~/.cache/fairnas/data"

IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def default_data_root() -> Path:
    """Download/cache root: ``$FAIRNAS_DATA_DIR`` or ``~/.cache/fairnas/data``."""
    return Path(os.environ.get("FAIRNAS_DATA_DIR") or DEFAULT_DATA_ROOT).expanduser()


def _load_idx_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype.kind != "u" or images.dtype.itemsize != 1:
        raise IDXError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise IDXError(
            f"{labels_path}: {labels.shape} labels do not match the {images.shape[0]} images in {images_path}"
        )
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


class _IDXDataModule(InMemoryDataModule):
    """MNIST-style dataset read from the four IDX files, found on disk or downloaded.

    Search order: ``data_dir`` (and its torchvision layout ``data_dir/<Name>/raw``), system
    package directories, the cache root (and its torchvision layout), then a torchvision
    download into ``data_dir`` or the cache root when ``download`` is true.
    """

    _display_name: ClassVar[str]
    _torchvision_name: ClassVar[str]
    _apt_package: ClassVar[str | None] = None

    MEAN: ClassVar[tuple[float, ...]]
    STD: ClassVar[tuple[float, ...]]

    def __init__(self, data_dir: str | None = None, download: bool = True, **common: Any) -> None:
        super().__init__(num_classes=10, in_channels=1, image_size=28, mean=self.MEAN, std=self.STD, **common)
        self.data_dir = None if data_dir is None else str(data_dir)
        self.download = bool(download)

    def _system_dirs(self) -> list[Path]:
        return []

    def _download_root(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir is not None else default_data_root()

    def _candidate_dirs(self) -> list[Path]:
        dirs: list[Path] = []
        if self.data_dir is not None:
            root = Path(self.data_dir).expanduser()
            dirs += [root, root / self._torchvision_name / "raw"]
        dirs += self._system_dirs()
        cache = default_data_root()
        dirs += [cache, cache / self._torchvision_name / "raw"]
        return list(dict.fromkeys(dirs))  # dedupe, keep order

    def _find_files(self) -> dict[str, Path] | None:
        for directory in self._candidate_dirs():
            found = {key: find_idx_file(directory, name) for key, name in IDX_FILES.items()}
            if all(path is not None for path in found.values()):
                return found  # type: ignore[return-value]
        return None

    def _torchvision_download(self) -> None:
        import torchvision

        dataset_cls = getattr(torchvision.datasets, self._torchvision_name)
        # Downloading one split fetches all four IDX files into <root>/<Name>/raw.
        dataset_cls(str(self._download_root()), train=True, download=True)

    def prepare_data(self) -> None:
        """Download the IDX files if they are nowhere on disk (Lightning runs this on rank 0)."""
        if self._find_files() is None and self.download:
            self._resolve_files()

    def _resolve_files(self) -> dict[str, Path]:
        found = self._find_files()
        if found is not None:
            return found
        failure = "downloading was disabled (download=False)"
        if self.download:
            try:
                self._torchvision_download()
            except Exception as e:
                failure = f"downloading into {self._download_root()} failed: {type(e).__name__}: {e}"
            else:
                found = self._find_files()
                if found is not None:
                    return found
                failure = f"download into {self._download_root()} did not produce the IDX files"
        raise DataNotFoundError(self._missing_message(failure))

    def _missing_message(self, failure: str) -> str:
        files = ", ".join(f"{name}[.gz]" for name in IDX_FILES.values())
        places = "\n".join(f"  - {d}" for d in self._candidate_dirs())
        fixes = []
        if self._apt_package is not None:
            fixes.append(f"  - install the Debian package: sudo apt-get install {self._apt_package}")
        fixes += [
            "  - point to a folder holding the four IDX files: dataset.data_dir=/path/to/idx/files",
            "  - allow downloading (needs internet): dataset.download=true",
        ]
        return (
            f"{self._display_name} data not found. Looked for {files} in:\n{places}\n"
            f"and {failure}.\nTo fix, do one of:\n" + "\n".join(fixes)
        )

    def _load_arrays(self) -> InMemoryArrays:
        files = self._resolve_files()
        train_x, train_y = _load_idx_pair(files["train_images"], files["train_labels"])
        test_x, test_y = _load_idx_pair(files["test_images"], files["test_labels"])
        return InMemoryArrays(train_x, train_y, test_x, test_y)


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST (10 classes, 1x28x28) from IDX files, held in memory.

    Looks in ``data_dir`` (also ``data_dir/FashionMNIST/raw``), then the Debian package
    directory ``/usr/share/datasets/fashion-mnist``, then the cache root, then downloads
    with torchvision when ``download`` is true.

    Args:
        data_dir: Folder with the IDX files (plain or ``.gz``); also the download target.
        download: Allow a torchvision download when the files are nowhere on disk.
        augment: None, ``"flip"``, ``"crop"`` or ``"crop_flip"`` (2-px padding).
        crop_padding: Override the crop padding.
        **common: ``batch_size``, ``eval_batch_size``, ``val_size``, ``seed``, ``train_subset``,
            ``num_workers``.
    """

    _display_name = "Fashion-MNIST"
    _torchvision_name = "FashionMNIST"
    _apt_package = "dataset-fashion-mnist"
    MEAN = (0.2860,)
    STD = (0.3530,)
    CLASSES = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip

    def _system_dirs(self) -> list[Path]:
        return [Path(DEBIAN_FASHION_MNIST_DIR)]


class MNISTDataModule(_IDXDataModule):
    """MNIST (10 classes, 1x28x28) from IDX files, held in memory.

    Looks in ``data_dir`` (also ``data_dir/MNIST/raw``), then the cache root, then downloads
    with torchvision when ``download`` is true. Arguments as :class:`FashionMNISTDataModule`.
    """

    _display_name = "MNIST"
    _torchvision_name = "MNIST"
    MEAN = (0.1307,)
    STD = (0.3081,)


class _CIFARDataModule(InMemoryDataModule):
    """CIFAR loaded once through torchvision into memory (HWC -> CHW uint8)."""

    _torchvision_name: ClassVar[str]
    _num_classes: ClassVar[int]
    MEAN: ClassVar[tuple[float, ...]]
    STD: ClassVar[tuple[float, ...]]

    def __init__(
        self, data_dir: str | None = None, download: bool = True, augment: str | None = "crop_flip", **common: Any
    ) -> None:
        super().__init__(
            num_classes=self._num_classes, in_channels=3, image_size=32, mean=self.MEAN, std=self.STD,
            augment=augment, **common,
        )  # fmt: skip
        self.data_dir = None if data_dir is None else str(data_dir)
        self.download = bool(download)

    def _root(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir is not None else default_data_root()

    def _open(self, train: bool):
        import torchvision

        dataset_cls = getattr(torchvision.datasets, self._torchvision_name)
        try:
            # Try without download first: download=True re-hashes the whole archive every time.
            return dataset_cls(str(self._root()), train=train, download=False)
        except RuntimeError as missing:
            if not self.download:
                raise DataNotFoundError(self._missing_message("downloading was disabled (download=False)")) from missing
        try:
            return dataset_cls(str(self._root()), train=train, download=True)
        except Exception as e:
            raise DataNotFoundError(self._missing_message(f"downloading failed: {type(e).__name__}: {e}")) from e

    def _missing_message(self, failure: str) -> str:
        return (
            f"{self._torchvision_name} data not found under {self._root()} and {failure}.\n"
            "To fix, do one of:\n"
            "  - point to a folder holding the torchvision CIFAR files "
            f"(e.g. {self._root()}/cifar-*-batches-py): dataset.data_dir=/path/to/root\n"
            "  - allow downloading (needs internet): dataset.download=true"
        )

    def prepare_data(self) -> None:
        """Download the archive if needed (Lightning runs this on rank 0 only)."""
        self._open(train=True)

    def _load_arrays(self) -> InMemoryArrays:
        arrays = []
        for train in (True, False):
            ds = self._open(train)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            arrays += [images, torch.as_tensor(ds.targets, dtype=torch.long)]
        return InMemoryArrays(*arrays)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (10 classes, 3x32x32) in memory; default augment ``"crop_flip"`` (4-px padding).

    Args:
        data_dir: torchvision root holding (or receiving) ``cifar-10-batches-py``; default cache root.
        download: Allow a torchvision download when missing.
        **common: See :class:`InMemoryDataModule`.
    """

    _torchvision_name = "CIFAR10"
    _num_classes = 10
    MEAN = (0.4914, 0.4822, 0.4465)
    STD = (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (100 classes, 3x32x32) in memory; default augment ``"crop_flip"`` (4-px padding).

    Args:
        data_dir: torchvision root holding (or receiving) ``cifar-100-python``; default cache root.
        download: Allow a torchvision download when missing.
        **common: See :class:`InMemoryDataModule`.
    """

    _torchvision_name = "CIFAR100"
    _num_classes = 100
    MEAN = (0.5071, 0.4865, 0.4409)
    STD = (0.2673, 0.2564, 0.2762)


class SyntheticDataModule(InMemoryDataModule):
    """Deterministic random images for smoke tests, held in memory.

    Each class has a fixed random prototype image; a sample is the average of its class
    prototype and uniform noise, so the task is learnable (a smoke run's accuracy can rise)
    yet needs no files. Everything is drawn from a generator seeded by ``seed``.

    The validation split is generated separately with ``num_val`` samples; ``val_size`` (the
    held-out split of file datasets) does not apply and is refused if set, never silently dropped.

    Args:
        image_size: Image height and width.
        channels: Image channels.
        num_classes: Number of classes.
        num_train: Training samples.
        num_val: Validation samples.
        num_test: Test samples (0 for no test split).
        **common: ``batch_size``, ``eval_batch_size``, ``seed``, ``augment``, ``train_subset``,
            ``num_workers``, ``crop_padding``.
    """

    # Mean/std of (uniform + uniform) / 2 in [0, 1]: 0.5 and sqrt(1/24).
    MEAN_VALUE = 0.5
    STD_VALUE = 0.2041

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        *,
        augment: str | None = None,
        crop_padding: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int | float | None = None,
        seed: int = 0,
        train_subset: int | None = None,
        split_seed: int | None = None,
        num_workers: int = 0,
    ) -> None:
        if val_size is not None:
            raise DataError(
                f"dataset=synthetic generates its validation split: set dataset.num_val (now {num_val}), "
                f"not val_size ({val_size!r}), which only file datasets hold out of their training images"
            )
        super().__init__(
            num_classes=num_classes,
            in_channels=channels,
            image_size=image_size,
            mean=(self.MEAN_VALUE,) * int(channels),
            std=(self.STD_VALUE,) * int(channels),
            augment=augment,
            crop_padding=crop_padding,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_size=0,
            seed=seed,
            train_subset=train_subset,
            split_seed=split_seed,
            num_workers=num_workers,
        )
        if min(num_train, num_val) < 1 or num_test < 0 or num_classes < 1:
            raise DataError(
                f"need num_train, num_val, num_classes >= 1 and num_test >= 0; got "
                f"{num_train}, {num_val}, {num_classes}, {num_test}"
            )
        self.num_train, self.num_val, self.num_test = int(num_train), int(num_val), int(num_test)

    def _load_arrays(self) -> InMemoryArrays:
        generator = torch.Generator().manual_seed(derive_seed(self.split_seed, STREAM_SYNTHETIC))
        shape = (self.in_channels, self.image_size, self.image_size)
        prototypes = torch.randint(0, 256, (self.num_classes, *shape), generator=generator, dtype=torch.int16)

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.randint(0, self.num_classes, (n,), generator=generator)
            noise = torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.int16)
            return ((prototypes[labels] + noise) // 2).to(torch.uint8), labels

        train_x, train_y = draw(self.num_train)
        val_x, val_y = draw(self.num_val)
        test_x, test_y = draw(self.num_test) if self.num_test > 0 else (None, None)
        return InMemoryArrays(train_x, train_y, test_x, test_y, val_x, val_y)
