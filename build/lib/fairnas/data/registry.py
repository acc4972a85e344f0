"""The project's datamodules by name: how a dataset named in a checkpoint is turned into a class.

A checkpoint names its dataset (``"synthetic"``, ``"fashion_mnist"``, ...: the names of
``conf/dataset/*.yaml``), never an import path to be instantiated: a file cannot make fairnas
import or call anything. A datamodule class from outside fairnas is usable only when the user
names it on the command line (``allow_datasets=[my_pkg.MyDataModule]``): the trust comes from the
person running the command, not from the file.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from fairnas.data.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SyntheticDataModule,
)
from fairnas.data.folder import ImageFolderDataModule, ImageNetDataModule
from fairnas.data.memory_folder import InMemoryImageFolderDataModule
from fairnas.errors import UnknownDatasetError

# Name (the conf/dataset file it comes from) -> datamodule class.
DATASETS: dict[str, type] = {
    "synthetic": SyntheticDataModule,
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "image_folder": ImageFolderDataModule,
    "imagenet": ImageNetDataModule,
    "cifar10_folder": InMemoryImageFolderDataModule,
}


def class_path(cls: type) -> str:
    """``module.QualName`` of a class, as written in a ``_target_``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def dataset_name(cls: type) -> str:
    """The registry name of a datamodule class, or its import path for a class outside the registry."""
    for name, known in DATASETS.items():
        if cls is known:
            return name
    return class_path(cls)


def _spellings(name: str, cls: type) -> set[str]:
    return {name, class_path(cls), f"fairnas.data.{cls.__name__}"}


def datamodule_class(name: str, allow: Sequence[str] = ()) -> type:
    """The class of the dataset ``name``: a registry name (or the import path of a registered class),
    or an import path the user listed in ``allow``. Nothing else is ever imported.

    Raises:
        UnknownDatasetError: naming the known datasets and how to allow another class.
    """
    for known_name, cls in DATASETS.items():
        if name in _spellings(known_name, cls):
            return cls
    if name in [str(a) for a in allow]:
        module_name, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as err:
            raise UnknownDatasetError(f"allow_datasets names {name!r}, which cannot be imported: {err}") from None
        if not isinstance(cls, type):
            raise UnknownDatasetError(f"allow_datasets names {name!r}, which is not a class")
        return cls
    raise UnknownDatasetError(
        f"unknown dataset {name!r}: fairnas builds only its own datamodules ({', '.join(DATASETS)}). "
        f"If you trust this class, allow it on the command line: allow_datasets=[{name}]"
    )
