"""A folder of class folders (e.g. CIFAR-10 as JPEGs) decoded once into memory and cached.

``root/train/<class>/*`` (and ``root/test/<class>/*`` or ``root/val/<class>/*`` as the test
split) of small, same-size images is decoded to uint8 once, and the arrays are saved to a cache
(``.npz``); later runs, and every epoch, read the arrays, never the images. The cache holds a
fingerprint of the image files (relative path, size and modification time of each): when a file
is added, removed or changed, the cache is rebuilt. It is written atomically, so an interrupted
build never leaves a truncated cache, and an unreadable cache is rebuilt rather than trusted.

Everything else (batched augmentation, seeded validation split, exact mid-epoch resume) is that
of the other in-memory datasets (:class:`fairnas.data.InMemoryDataModule`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairnas.data.datamodules import default_data_root
from fairnas.data.memory import InMemoryArrays, InMemoryDataModule
from fairnas.errors import DataError, DataNotFoundError
from fairnas.utils.io import _umask

__all__ = ["IMAGE_EXTENSIONS", "InMemoryImageFolderDataModule", "decode_image"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
CACHE_VERSION = 1
TEST_FOLDERS = ("test", "val")


def decode_image(path: Path, channels: int, size: int) -> np.ndarray:
    """One image file as uint8 (channels, size, size).

    Raises:
        DataError: the file cannot be decoded, or its size is not ``size`` x ``size``.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as an image ({error}); remove or replace the file") from None
    if array.shape[:2] != (size, size):
        raise DataError(
            f"{path}: the image is {array.shape[1]}x{array.shape[0]}, expected {size}x{size} "
            "(every image of an in-memory folder dataset must already have its size)"
        )
    return array.reshape(size, size, channels).transpose(2, 0, 1)


# One image file: (path relative to the split folder, label, size in bytes, modification time in ns).
FileRecord = tuple[str, int, int, int]


def _list_split(folder: Path) -> tuple[list[str], list[FileRecord]]:
    """Class names (sorted) and every image's record, sorted by name within its class.

    Plain strings and ``os.scandir`` keep this fast: 60,000 files take well under a second.
    """
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    files: list[FileRecord] = []
    for label, name in enumerate(classes):
        entries = sorted(
            (
                e
                for e in os.scandir(os.path.join(folder, name))
                if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            ),
            key=lambda e: e.name,
        )
        for e in entries:
            st = e.stat()
            files.append((f"{name}/{e.name}", label, st.st_size, st.st_mtime_ns))
    return classes, files


class InMemoryImageFolderDataModule(InMemoryDataModule):
    """Small same-size images in class folders, decoded once into memory and cached as uint8 arrays.

    Layout: ``root/train/<class>/*`` and optionally ``root/test/<class>/*`` (or ``root/val/<class>/*``),
    used as the TEST split. Labels are the class folders in sorted order (the test folder uses
    the training folder's classes); within a class, files are read in name order. The
    validation split is held out from ``train`` (seeded, ``val_size``), as for CIFAR-10 via
    torchvision. The cifar10_folder config reads CIFAR-10 exported as images.

    Args:
        root: Dataset root (see layout above).
        num_classes: Expected number of class folders (checked when loading).
        image_size: Height and width of every image.
        mean: Per-channel mean in [0, 1] units.
        std: Per-channel std in [0, 1] units.
        in_channels: 3 (RGB) or 1 (grayscale).
        cache_dir: Folder of the cache file; default ``root/.fairnas-cache`` when ``root`` is
            writable, else ``$FAIRNAS_DATA_DIR`` (or ``~/.cache/fairnas/data``)/``folder-cache/<hash of root>``.
        augment: None, ``"flip"``, ``"crop"`` or ``"crop_flip"`` (default, 4-px padding at 32 px).
        **common: ``batch_size``, ``eval_batch_size``, ``val_size``, ``seed``, ``split_seed``,
            ``train_subset``, ``num_workers`` (see :class:`InMemoryDataModule`).
    """

    def __init__(
        self,
        root: str,
        num_classes: int,
        image_size: int,
        mean: Any,
        std: Any,
        in_channels: int = 3,
        cache_dir: str | None = None,
        augment: str | None = "crop_flip",
        **common: Any,
    ) -> None:
        if int(in_channels) not in (1, 3):
            raise DataError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, mean=mean, std=std,
            augment=augment, **common,
        )  # fmt: skip
        self.root = Path(str(root)).expanduser()
        self.cache_dir = None if cache_dir is None else Path(str(cache_dir)).expanduser()
        self.classes: list[str] | None = None
        self._decoded: dict[str, np.ndarray] | None = None  # prepare_data's arrays, reused by setup

    # ----------------------------------------------------------------------------- files
    def _split_folders(self) -> tuple[Path, Path | None]:
        train = self.root / "train"
        if not train.is_dir():
            raise DataNotFoundError(
                f"no training folder {train}: dataset.root must hold train/<class>/* (and test/<class>/*); "
                "e.g. extract cifar10-jpeg.tar.gz and set dataset.root to the extracted folder"
            )
        test = next((self.root / n for n in TEST_FOLDERS if (self.root / n).is_dir()), None)
        return train, test

    def cache_path(self) -> Path:
        """Where the cache file of this folder lives."""
        if self.cache_dir is not None:
            return self.cache_dir / "images.npz"
        local = self.root / ".fairnas-cache"
        if os.access(self.root, os.W_OK) or (local.is_dir() and os.access(local, os.W_OK)):
            return local / "images.npz"
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return default_data_root() / "folder-cache" / digest / "images.npz"

    def _scan(self) -> tuple[list[str], dict[str, tuple[Path, list[FileRecord]]], str]:
        """Classes, files per split, and the fingerprint of the whole tree."""
        train, test = self._split_folders()
        classes, train_files = _list_split(train)
        if len(classes) != self.num_classes:
            raise DataError(
                f"{train} has {len(classes)} class folders, expected {self.num_classes}: "
                "set dataset.num_classes to the number of classes"
            )
        if not train_files:
            raise DataNotFoundError(f"{train} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        files = {"train": (train, train_files)}
        if test is not None:
            test_classes, test_files = _list_split(test)
            unknown = sorted(set(test_classes) - set(classes))
            if unknown:
                raise DataError(f"{test} has classes that {train} lacks: {unknown}")
            index = [classes.index(name) for name in test_classes]
            files["test"] = (test, [(name, index[label], size, mtime) for name, label, size, mtime in test_files])
        lines = [f"v{CACHE_VERSION} {self.in_channels} {self.image_size}"]
        for split, (_, items) in files.items():
            lines += [f"{split}/{name}\t{label}\t{size}\t{mtime}" for name, label, size, mtime in items]
        return classes, files, hashlib.sha256("\n".join(lines).encode()).hexdigest()

    # ----------------------------------------------------------------------------- cache
    def _read_cache(self, path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as cache:
                if str(cache["fingerprint"]) != fingerprint:
                    log.info("%s: the image files changed since the cache was built; rebuilding it", path)
                    return None
                return {key: cache[key] for key in cache.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
            log.warning("%s: unreadable cache (%s); rebuilding it", path, error)
            return None

    def _build_cache(self, path: Path, classes: list[str], files: dict[str, list], fingerprint: str) -> dict:
        arrays: dict[str, np.ndarray] = {"fingerprint": np.array(fingerprint), "classes": np.array(classes)}
        for split, (folder, items) in files.items():
            images = np.empty((len(items), self.in_channels, self.image_size, self.image_size), dtype=np.uint8)
            for i, (name, _, _, _) in enumerate(items):
                images[i] = decode_image(folder / name, self.in_channels, self.image_size)
            arrays[f"{split}_images"] = images
            arrays[f"{split}_labels"] = np.array([label for _, label, _, _ in items], dtype=np.int64)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                os.fchmod(fd, 0o666 & ~_umask())  # an ordinary file's permissions, not mkstemp's 0600
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **arrays)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as error:  # a read-only place: the arrays are still good for this run
            log.warning("cannot write the image cache %s (%s): set dataset.cache_dir to a writable folder", path, error)
        else:
            log.info(
                "decoded %d images of %s into the cache %s", sum(len(f[1]) for f in files.values()), self.root, path
            )
        return arrays

    def _cached_arrays(self) -> dict[str, np.ndarray]:
        if self._decoded is None:
            classes, files, fingerprint = self._scan()
            path = self.cache_path()
            arrays = self._read_cache(path, fingerprint)
            self._decoded = arrays if arrays is not None else self._build_cache(path, classes, files, fingerprint)
        return self._decoded

    # ----------------------------------------------------------------------------- hooks
    def prepare_data(self) -> None:
        """Builds the cache if it is missing or stale (Lightning runs this once per node)."""
        self._cached_arrays()

    def _load_arrays(self) -> InMemoryArrays:
        arrays = self._cached_arrays()
        self._decoded = None  # the arrays below keep the data; no second reference
        self.classes = [str(c) for c in arrays["classes"]]
        test = "test_images" in arrays
        return InMemoryArrays(
            torch.from_numpy(arrays["train_images"]),
            torch.from_numpy(arrays["train_labels"]),
            torch.from_numpy(arrays["test_images"]) if test else None,
            torch.from_numpy(arrays["test_labels"]) if test else None,
        )

    def _no_test_message(self) -> str:
        return f"{self.root} has no test split: add test/<class>/* (or val/<class>/*) next to train/"
