"""On-disk image-folder datamodules (any ``ImageFolder`` tree, ImageNet)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from fairnas.data.base import SplitDataModule, Splits, split_indices
from fairnas.data.memory import normalize_augment
from fairnas.errors import DataError, DataNotFoundError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageFolderDataModule", "ImageNetDataModule"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Eval resize ratio of the standard ImageNet recipe (256 -> 224 centre crop).
CENTER_CROP_RATIO = 0.875


class _ImageFolderWithClasses(ImageFolder):
    """ImageFolder whose class -> index mapping is fixed (the training folder's).

    Without this, a test folder missing a class would silently shift every later label.
    """

    def __init__(self, root: str | Path, class_to_idx: dict[str, int], allow_empty: bool) -> None:
        self._fixed_class_to_idx = dict(class_to_idx)
        super().__init__(str(root), allow_empty=allow_empty)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = sorted(self._fixed_class_to_idx, key=self._fixed_class_to_idx.__getitem__)
        return classes, dict(self._fixed_class_to_idx)


class _FolderView(Dataset):
    """A subset of an ImageFolder's samples with its own transform (no rescan of the tree)."""

    def __init__(self, folder: ImageFolder, indices: torch.Tensor | None, transform: Callable[[Any], Any]) -> None:
        self.folder = folder
        self.indices = None if indices is None else indices.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.folder.samples) if self.indices is None else len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if self.indices is not None:
            index = self.indices[index]
        path, target = self.folder.samples[index]
        try:
            image = self.folder.loader(path)
        except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated, not an image, malformed
            raise DataError(_unreadable_message([(path, e)])) from None
        return self.transform(image), target


def _check_image(path: str) -> BaseException | None:
    """The error decoding ``path`` fully raises (None if it decodes). Reads the whole file."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: a truncated file fails here, not only at training time
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return e
    return None


def _unreadable_message(bad: Sequence[tuple[str, BaseException]], total: int | None = None) -> str:
    shown = "; ".join(f"{path} ({type(e).__name__}: {str(e).splitlines()[0][:120]})" for path, e in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    of = f" of {total}" if total is not None else ""
    return (
        f"{len(bad)}{of} image files cannot be decoded (truncated, or not images): {shown}{more}. Remove or replace "
        "them; dataset.check_images=true finds every such file before training starts."
    )


class ImageFolderDataModule(SplitDataModule):
    """Any ``ImageFolder`` tree with standard ImageNet-style transforms.

    Layout: ``root/train/<class>/*`` for training and optionally ``root/val/<class>/*`` (or
    ``root/test/<class>/*``), used as the TEST split. If ``root`` has no ``train/`` folder,
    ``root`` itself is the training folder and there is no test split. The validation split is
    always held out from the training folder (seeded) and uses the eval transforms.

    Transforms by ``augment``: ``"crop_flip"`` (default) RandomResizedCrop + horizontal flip;
    ``"crop"`` RandomResizedCrop; ``"flip"`` resize + centre crop + flip; None the eval
    transform (Resize(int(size / 0.875)) + CenterCrop). Random transforms use torch's global
    RNG, which DataLoader workers seed from the (seeded) loader generator.

    Args:
        root: Dataset root (see layout above).
        image_size: Output height and width.
        val_size: Validation count, or fraction in (0, 1), held out from the training folder.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        check_images: Decode every image once at set-up (threads), and refuse the data, naming
            the files, if any is truncated or not an image. Off: a bad file stops training when
            it is first loaded, with the same message. A corrupt JPEG that PIL still decodes
            (damaged bytes inside the image data) cannot be detected either way.
        **common: ``batch_size``, ``eval_batch_size``, ``seed``, ``augment``, ``train_subset``,
            ``num_workers`` (default 4).

    Raises:
        DataNotFoundError: If ``root`` is missing or has no class folders.
        DataError: If the training folder has a single class, or (``check_images``) unreadable images.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        val_size: int | float = 0.1,
        *,
        augment: str | None = "crop_flip",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
        train_subset: int | None = None,
        split_seed: int | None = None,
        num_workers: int = 4,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        check_images: bool = True,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_size=val_size,
            seed=seed,
            train_subset=train_subset,
            split_seed=split_seed,
            num_workers=num_workers,
        )
        self.root = Path(str(root)).expanduser()
        if not self.root.is_dir():
            raise DataNotFoundError(
                f"image folder root {self.root} does not exist; set dataset.root=/path/to/dataset "
                "(holding train/<class>/ and optionally val/<class>/)"
            )
        has_train = (self.root / "train").is_dir()
        self.train_dir = self.root / "train" if has_train else self.root
        self.test_dir: Path | None = None
        if has_train:
            self.test_dir = next((self.root / n for n in ("val", "test") if (self.root / n).is_dir()), None)
        try:
            self.classes, self.class_to_idx = find_classes(str(self.train_dir))
        except FileNotFoundError as e:
            raise DataNotFoundError(
                f"no class folders in {self.train_dir}: expected {self.train_dir}/<class_name>/<images>"
            ) from e
        if len(self.classes) < 2:
            raise DataError(
                f"{self.train_dir} has {len(self.classes)} class folder ({', '.join(self.classes)}): classification "
                f"needs at least 2, as {self.train_dir}/<class_name>/<images> (is dataset.root one level too deep?)"
            )
        self.num_classes = len(self.classes)
        self.check_images = bool(check_images)
        self.in_channels = 3
        self.image_size = int(image_size)
        self.augment = normalize_augment(augment)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    # ----------------------------------------------------------------- transforms
    def _normalize(self) -> list[Callable[[Any], Any]]:
        return [T.ToTensor(), T.Normalize(self.mean, self.std)]

    def eval_transform(self) -> Callable[[Any], Any]:
        """Resize(int(size / 0.875)) + CenterCrop(size) + normalise."""
        size = self.image_size
        return T.Compose([T.Resize(int(size / CENTER_CROP_RATIO)), T.CenterCrop(size), *self._normalize()])

    def train_transform(self) -> Callable[[Any], Any]:
        """Training transform selected by ``augment``."""
        size = self.image_size
        if self.augment is None:
            return self.eval_transform()
        if "crop" in self.augment:
            steps: list[Callable[[Any], Any]] = [T.RandomResizedCrop(size)]
        else:
            steps = [T.Resize(int(size / CENTER_CROP_RATIO)), T.CenterCrop(size)]
        if "flip" in self.augment:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose([*steps, *self._normalize()])

    # ----------------------------------------------------------------- splits
    def _scan(self, directory: Path, allow_empty: bool) -> ImageFolder:
        try:
            folder = _ImageFolderWithClasses(directory, self.class_to_idx, allow_empty=allow_empty)
        except FileNotFoundError as e:
            raise DataNotFoundError(f"no readable images under {directory}: {e}") from e
        if self.check_images:
            paths = [path for path, _ in folder.samples]
            with ThreadPoolExecutor(max(1, self.num_workers)) as pool:  # PIL decodes without the GIL
                errors = list(pool.map(_check_image, paths))
            bad = [(path, e) for path, e in zip(paths, errors, strict=True) if e is not None]
            if bad:
                raise DataError(f"{directory}: " + _unreadable_message(bad, len(paths)))
        return folder

    def _build_splits(self) -> Splits:
        self._train_folder = self._scan(self.train_dir, allow_empty=False)
        train_idx, val_idx = split_indices(len(self._train_folder.samples), self.val_size, self.split_seed)
        self._train_idx = self._subset_train(train_idx)
        test = None
        if self.test_dir is not None:
            # A validation folder may cover only some classes; labels still follow train's mapping.
            test = _FolderView(self._scan(self.test_dir, allow_empty=True), None, self.eval_transform())
        return Splits(
            train=_FolderView(self._train_folder, self._train_idx, self.train_transform()),
            val=_FolderView(self._train_folder, val_idx, self.eval_transform()),
            test=test,
        )

    def _calibration_dataset(self, positions: torch.Tensor) -> Dataset:
        self.setup()
        return _FolderView(self._train_folder, self._train_idx[positions], self.eval_transform())

    def _no_test_message(self) -> str:
        return (
            f"{type(self).__name__}: {self.root} has no train/ subfolder, so it is used as the training "
            "folder and there is no test split. Use root/train/<class>/ and root/val/<class>/ "
            "to get a test split."
        )


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k in ``ImageFolder`` layout (``root/train``, ``root/val``); warns unless 1000 classes.

    Args:
        root: ImageNet root holding ``train/<wnid>/`` and ``val/<wnid>/``.
        image_size: Output height and width.
        val_size: Validation images held out from ``train`` (default 10000).
        **common: As :class:`ImageFolderDataModule`.
    """

    EXPECTED_CLASSES = 1000

    def __init__(self, root: str, image_size: int = 224, val_size: int | float = 10000, **common: Any) -> None:
        super().__init__(root, image_size, val_size, **common)
        if self.num_classes != self.EXPECTED_CLASSES:
            warnings.warn(
                f"ImageNet root {self.train_dir} has {self.num_classes} class folders, "
                f"expected {self.EXPECTED_CLASSES}",
                stacklevel=2,
            )
