"""In-memory image datasets with batched (vectorised) augmentation and normalisation."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fairnas.data.base import STREAM_AUGMENT, SplitDataModule, Splits, derive_seed, split_indices
from fairnas.errors import DataError

__all__ = [
    "AUGMENTATIONS",
    "BatchedTensorDataset",
    "InMemoryArrays",
    "InMemoryDataModule",
    "augment_batch",
    "default_crop_padding",
    "random_crop",
    "random_flip",
]

AUGMENTATIONS: tuple[str | None, ...] = (None, "flip", "crop", "crop_flip")


def normalize_augment(augment: str | None) -> str | None:
    """Validate an ``augment`` name; ``"none"``/``""`` (as typed on a Hydra CLI) mean None."""
    if augment is None or str(augment).lower() in ("none", "null", ""):
        return None
    augment = str(augment).lower()
    if augment not in AUGMENTATIONS:
        raise DataError(f"augment={augment!r} is not one of {AUGMENTATIONS}")
    return augment


def default_crop_padding(image_size: int) -> int:
    """Zero padding for random crops: 4 px at 32 px (size // 8), 2 px for smaller images (28 px)."""
    return image_size // 8 if image_size >= 32 else max(1, image_size // 14)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch horizontally with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator).to(images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random same-size crop of each zero-padded image in a (B, C, H, W) batch.

    Equivalent to ``torchvision.transforms.RandomCrop(size, padding=padding)`` per image, done as
    one gather over the batch.
    """
    if padding <= 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(images.device)
    rows = (offsets[0].view(b, 1) + torch.arange(h, device=images.device)).view(b, 1, h, 1)
    cols = (offsets[1].view(b, 1) + torch.arange(w, device=images.device)).view(b, 1, 1, w)
    batch_idx = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    chan_idx = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch_idx, chan_idx, rows, cols]


def augment_batch(
    images: torch.Tensor, augment: str | None, generator: torch.Generator, padding: int | None = None
) -> torch.Tensor:
    """Apply a named augmentation (see ``AUGMENTATIONS``) to a whole (B, C, H, W) batch.

    Args:
        images: Batch of any dtype (uint8 keeps the zero padding black, as torchvision does).
        augment: None, ``"flip"``, ``"crop"`` or ``"crop_flip"``.
        generator: Source of all random draws.
        padding: Crop padding; defaults to :func:`default_crop_padding` of the image height.

    Returns:
        Augmented batch with the same shape and dtype.
    """
    augment = normalize_augment(augment)
    if augment is None:
        return images
    if "crop" in augment:
        pad = default_crop_padding(images.shape[-2]) if padding is None else padding
        images = random_crop(images, pad, generator)
    if "flip" in augment:
        images = random_flip(images, generator)
    return images


class BatchedTensorDataset(Dataset):
    """Map-style dataset over uint8 images whose ``__getitems__`` builds a whole batch at once.

    The DataLoader fetcher calls ``__getitems__(indices)`` for each batch, so indexing,
    augmentation and normalisation run as a handful of tensor ops instead of per-sample Python.
    Use it with a collate_fn that returns the batch unchanged.

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
        mean: Per-channel mean in [0, 1] units.
        std: Per-channel std in [0, 1] units.
        augment: Augmentation name (see ``AUGMENTATIONS``); None for eval data.
        seed: Seeds the augmentation. Each batch's draws are a function of ``seed`` and the
            batch's indices alone, so they do not depend on how many batches came before (a
            resumed run, or DataLoader workers, see exactly what an uninterrupted one would).
        crop_padding: Crop padding; None for :func:`default_crop_padding`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str | None = None,
        seed: int = 0,
        crop_padding: int | None = None,
    ) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise DataError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise DataError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"mean/std need {channels} values, got {len(mean)}/{len(std)}")
        self.images = images
        self.labels = labels.long()
        self.augment = normalize_augment(augment)
        self.crop_padding = crop_padding
        # Normalise in uint8 units: (x / 255 - m) / s == (x - 255 m) / (255 s).
        self._offset = torch.tensor([255.0 * float(m) for m in mean]).view(1, -1, 1, 1)
        self._scale = torch.tensor([255.0 * float(s) for s in std]).view(1, -1, 1, 1)
        self.seed = int(seed)
        self.generator = torch.Generator()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch ``(x float32 (B, C, H, W) normalised, y int64 (B,))``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]
        # Augment in uint8 so crop padding is black before normalisation, like torchvision.
        if self.augment is not None:
            self.generator.manual_seed(derive_seed(self.seed, *idx.tolist()))
            x = augment_batch(x, self.augment, self.generator, self.crop_padding)
        x = x.float().sub_(self._offset).div_(self._scale)
        return x, self.labels[idx]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


@dataclass
class InMemoryArrays:
    """Raw arrays returned by :meth:`InMemoryDataModule._load_arrays`.

    Images are uint8 (N, C, H, W), labels int64 (N,). ``val_*`` is set only by datasets that
    ship their own validation split (then no split is held out from ``train``).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None


class InMemoryDataModule(SplitDataModule):
    """Base for small datasets held in memory as uint8 (N, C, H, W) tensors with int64 labels.

    Subclasses implement :meth:`_load_arrays`. Batches are ``(x, y)`` with ``x`` float32,
    normalised with ``mean``/``std``; augmentation is batched and applied to the train split only.

    Args:
        num_classes: Number of classes.
        in_channels: Image channels.
        image_size: Image height and width.
        mean: Per-channel mean in [0, 1] units.
        std: Per-channel std in [0, 1] units.
        augment: None, ``"flip"``, ``"crop"`` or ``"crop_flip"``.
        crop_padding: Crop zero padding; None for 4 px at 32 px, 2 px at 28 px.
        **common: ``batch_size``, ``eval_batch_size``, ``val_size``, ``seed``, ``train_subset``,
            ``num_workers`` (see :class:`SplitDataModule`).
    """

    _batched = True

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str | None = None,
        crop_padding: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int | float = 5000,
        seed: int = 0,
        train_subset: int | None = None,
        split_seed: int | None = None,
        num_workers: int = 0,
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
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        # tuple(float) also converts OmegaConf ListConfig, so library code never keeps config nodes.
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = normalize_augment(augment)
        self.crop_padding = crop_padding
        self._arrays: InMemoryArrays | None = None

    @abstractmethod
    def _load_arrays(self) -> InMemoryArrays:
        """Read the raw arrays (called once per instance)."""

    @property
    def arrays(self) -> InMemoryArrays:
        """The raw loaded arrays (loaded on first access and cached)."""
        if self._arrays is None:
            arrays = self._load_arrays()
            self._check_arrays(arrays)
            self._arrays = arrays
        return self._arrays

    def _check_arrays(self, arrays: InMemoryArrays) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        pairs = [
            ("train", arrays.train_images, arrays.train_labels),
            ("val", arrays.val_images, arrays.val_labels),
            ("test", arrays.test_images, arrays.test_labels),
        ]
        for name, images, labels in pairs:
            if images is None:
                continue
            if images.dtype != torch.uint8 or tuple(images.shape[1:]) != expected:
                raise DataError(
                    f"{type(self).__name__}: {name} images are {images.dtype} {tuple(images.shape)}, "
                    f"expected uint8 (N, {', '.join(map(str, expected))})"
                )
            if labels is None or labels.shape != (images.shape[0],):
                raise DataError(f"{type(self).__name__}: {name} labels do not match {images.shape[0]} images")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise DataError(
                    f"{type(self).__name__}: {name} labels outside [0, {self.num_classes}): "
                    f"[{int(labels.min())}, {int(labels.max())}]"
                )

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor, augment: str | None) -> BatchedTensorDataset:
        seed = derive_seed(self.seed, STREAM_AUGMENT, self._global_rank())
        return BatchedTensorDataset(images, labels, self.mean, self.std, augment, seed, self.crop_padding)

    def _build_splits(self) -> Splits:
        arrays = self.arrays
        images, labels = arrays.train_images, arrays.train_labels
        if arrays.val_images is None or arrays.val_labels is None:
            train_idx, val_idx = split_indices(images.shape[0], self.val_size, self.split_seed)
            val_images, val_labels = images[val_idx], labels[val_idx]
        else:
            train_idx = torch.arange(images.shape[0])
            val_images, val_labels = arrays.val_images, arrays.val_labels
        train_idx = self._subset_train(train_idx)
        test = None
        if arrays.test_images is not None and arrays.test_labels is not None:
            test = self._dataset(arrays.test_images, arrays.test_labels, None)
        return Splits(
            train=self._dataset(images[train_idx], labels[train_idx], self.augment),
            val=self._dataset(val_images, val_labels, None),
            test=test,
        )

    def _calibration_dataset(self, positions: torch.Tensor) -> Dataset:
        train = self.train_dataset
        assert isinstance(train, BatchedTensorDataset)
        return self._dataset(train.images[positions], train.labels[positions], None)
