"""Datamodules for FairNAS supernet training (in-memory small datasets and image folders)."""

from fairnas.data.base import SplitDataModule, derive_seed, split_indices
from fairnas.data.datamodules import (
    DEBIAN_FASHION_MNIST_DIR,
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SyntheticDataModule,
    default_data_root,
)
from fairnas.data.folder import ImageFolderDataModule, ImageNetDataModule
from fairnas.data.idx import IDXError, read_idx, write_idx
from fairnas.data.memory import AUGMENTATIONS, BatchedTensorDataset, InMemoryDataModule, augment_batch
from fairnas.data.memory_folder import InMemoryImageFolderDataModule
from fairnas.errors import DataError, DataNotFoundError

__all__ = [
    "AUGMENTATIONS",
    "DEBIAN_FASHION_MNIST_DIR",
    "BatchedTensorDataset",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DataError",
    "DataNotFoundError",
    "FashionMNISTDataModule",
    "IDXError",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "InMemoryDataModule",
    "InMemoryImageFolderDataModule",
    "MNISTDataModule",
    "SplitDataModule",
    "SyntheticDataModule",
    "augment_batch",
    "default_data_root",
    "derive_seed",
    "read_idx",
    "split_indices",
    "write_idx",
]
