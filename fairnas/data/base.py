"""Shared datamodule machinery: seeded train/val split, loaders and BN-calibration loader.

Both datamodule families (in-memory tensors and on-disk image folders) derive from
:class:`SplitDataModule`, which owns the split, the shuffle generator and the DataLoader
construction, so the two only differ in how they build their datasets.
"""

from __future__ import annotations

import signal
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from fairnas.errors import ConfigError, DataError

__all__ = [
    "STREAM_AUGMENT",
    "STREAM_CALIBRATION",
    "STREAM_SHUFFLE",
    "STREAM_SPLIT",
    "STREAM_SYNTHETIC",
    "SEED_MAX",
    "SplitDataModule",
    "Splits",
    "check_seed",
    "derive_seed",
    "resolve_val_size",
    "split_indices",
]

# Each purpose draws from its own stream so that, e.g., changing the batch size (and hence the
# number of shuffle draws) never changes the train/val split or the augmentation sequence.
STREAM_SPLIT = 0
STREAM_SHUFFLE = 1
STREAM_AUGMENT = 2
STREAM_CALIBRATION = 3
STREAM_SYNTHETIC = 4


# User-facing seeds are what numpy's legacy seeding (used by Lightning's seed_everything) accepts.
SEED_MAX = 2**32 - 1


def check_seed(value: Any, setting: str = "seed") -> int:
    """A user-facing seed as an int in 0..2**32-1.

    Raises:
        ConfigError: naming ``setting``, for a negative, too large, fractional or non-numeric seed.
    """
    try:
        ok = not isinstance(value, bool) and int(value) == value and 0 <= int(value) <= SEED_MAX
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{setting} must be a whole number in 0..{SEED_MAX} (2**32-1), got {value!r}")
    return int(value)


def derive_seed(seed: int, *streams: int) -> int:
    """Derive an independent 63-bit seed for one purpose from a seed.

    Args:
        seed: A seed (user-facing seeds are checked by :func:`check_seed`; internal ones, such as a
            step or a worker seed, may be any int: it is taken modulo 2**64).
        *streams: Purpose identifiers (e.g. ``STREAM_SHUFFLE``, a rank, a worker seed).

    Returns:
        A non-negative int suitable for ``torch.Generator.manual_seed``.
    """
    entropy = [int(seed) % 2**64, *(int(s) % 2**64 for s in streams)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) & (2**63 - 1)


def resolve_val_size(val_size: int | float, n: int) -> int:
    """Turn ``val_size`` (a count, or a fraction in (0, 1)) into a count for ``n`` samples.

    Raises:
        DataError: If the resulting split would leave no training samples.
    """
    if isinstance(val_size, float) and not float(val_size).is_integer():
        if not 0.0 < val_size < 1.0:
            raise DataError(f"val_size={val_size}: a fractional val_size must be in (0, 1)")
        count = round(val_size * n)
    else:
        count = int(val_size)
    if count < 0 or count >= n:
        raise DataError(f"val_size={val_size} leaves no training data: the training set has {n} samples")
    if count == 0:
        raise DataError(
            f"val_size={val_size} gives an empty validation split: validation and the search score architectures "
            "on images held out from training. Set dataset.val_size to a count >= 1 or a fraction in (0, 1)."
        )
    return count


def split_indices(n: int, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into train and validation indices.

    Args:
        n: Number of samples in the original training set.
        val_size: Validation count, or fraction in (0, 1).
        seed: User seed; the split depends only on ``(n, val_size, seed)``.

    Returns:
        ``(train_idx, val_idx)`` int64 tensors, disjoint, covering ``range(n)``. Both are in
        random order, so taking a prefix of ``train_idx`` is a random subset.
    """
    n_val = resolve_val_size(val_size, n)
    generator = torch.Generator().manual_seed(derive_seed(seed, STREAM_SPLIT))
    perm = torch.randperm(n, generator=generator)
    return perm[n_val:], perm[:n_val]


def _validate_val_size(val_size: int | float) -> None:
    if isinstance(val_size, bool) or not isinstance(val_size, int | float):
        raise DataError(f"val_size must be an int or a float in (0, 1), got {val_size!r}")
    if val_size < 0 or (isinstance(val_size, float) and not val_size.is_integer() and val_size > 1):
        raise DataError(f"val_size must be >= 0 (a count) or in (0, 1) (a fraction), got {val_size!r}")


def identity_collate(batch: Any) -> Any:
    """Collate for datasets whose ``__getitems__`` already returns a whole batch."""
    return batch


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed torch's global RNG per worker (torchvision transforms use it).

    ``worker_info.seed`` is drawn from the loader's (seeded) generator, so the result stays
    deterministic for a given ``seed``. (In-memory datasets seed each batch from its indices
    and need no per-worker state.)

    Workers ignore SIGINT: Ctrl+C in a terminal reaches every process of the group, and a worker
    that quit on it would fail the step the main process finishes before it stops and saves
    (:class:`~fairnas.run.SaveOnInterrupt`). They end with the main process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    info = get_worker_info()
    if info is not None:
        torch.manual_seed(info.seed)


class EpochShuffleSampler(DistributedSampler):
    """A random order that is a function of ``(seed, epoch)``, sharded over DDP ranks, that can skip
    the part of an epoch already trained.

    Lightning calls :meth:`set_epoch` before every epoch, so a run resumed at epoch e draws
    exactly the order an uninterrupted run draws there, and :meth:`resume_at` makes a run resumed
    mid-epoch continue with the batches that were not trained yet. Under DDP each rank takes every
    ``num_replicas``-th index of the epoch's order (padded to a multiple of ``num_replicas`` with
    its first indices, as ``DistributedSampler`` does) and skips its own trained part, so a
    mid-epoch resume is exact there too. Being a ``DistributedSampler``, Lightning keeps it instead
    of swapping in its own, which cannot skip. With one process the order is the epoch's
    permutation itself.

    Args:
        data_source: The training dataset.
        seed: Seed of the order (the datamodule derives it from its ``seed``).
        num_replicas: Number of DDP processes.
        rank: This process's rank.
    """

    def __init__(self, data_source: Any, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(data_source, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed))
        self.data_source = data_source
        self._resume: tuple[int, int] | None = None  # (epoch, samples of this rank to skip)

    def resume_at(self, epoch: int, samples: int) -> None:
        """Skip this rank's first ``samples`` indices of epoch ``epoch`` (once: the next epoch starts in full)."""
        self._resume = (int(epoch), int(samples)) if samples > 0 else None

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, STREAM_SHUFFLE, self.epoch))
        order = torch.randperm(len(self.data_source), generator=generator).tolist()
        if self.num_replicas > 1:  # padded by repeating the order, then every num_replicas-th index
            order = (order * -(-self.total_size // len(order)))[: self.total_size]
            order = order[self.rank :: self.num_replicas]
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
            self._resume = None
        yield from order[start:]

    def __len__(self) -> int:
        # This rank's full epoch, also when resuming: Lightning counts the skipped batches as done.
        return self.num_samples


@dataclass
class Splits:
    """Datasets built by a datamodule's ``setup``; ``test`` is None when there is no test split."""

    train: Dataset
    val: Dataset
    test: Dataset | None


class SplitDataModule(pl.LightningDataModule):
    """Common API of all fairnas datamodules.

    Subclasses set ``num_classes``, ``in_channels`` and ``image_size`` in ``__init__`` and
    implement :meth:`_build_splits` and :meth:`_calibration_dataset`.

    Args:
        batch_size: Training (and calibration) batch size.
        eval_batch_size: Validation/test batch size; defaults to ``batch_size``.
        val_size: Validation split held out from the training set: a count, or a fraction in (0, 1).
        seed: Seeds the shuffle order and the augmentation, and the split unless ``split_seed`` is set.
        split_seed: Seeds the train/validation split (and the images of generated datasets) on its
            own, so that runs with different ``seed`` (data order, initialisation) share one
            validation set; ``None`` uses ``seed``.
        train_subset: Keep only the first N images of the (randomly ordered) training split.
        num_workers: DataLoader worker processes.
    """

    num_classes: int
    in_channels: int
    image_size: int
    # True when the datasets' ``__getitems__`` returns ready batches (no per-sample collate).
    _batched: bool = False

    def __init__(
        self,
        *,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int | float = 5000,
        seed: int = 0,
        train_subset: int | None = None,
        num_workers: int = 0,
        split_seed: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise DataError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        if train_subset is not None and train_subset < 1:
            raise DataError(f"train_subset must be >= 1 or None, got {train_subset}")
        if num_workers < 0:
            raise DataError(f"num_workers must be >= 0, got {num_workers}")
        _validate_val_size(val_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.val_size = val_size
        self.seed = check_seed(seed, "dataset.seed")
        self.split_seed = self.seed if split_seed is None else check_seed(split_seed, "dataset.split_seed")
        self.train_subset = None if train_subset is None else int(train_subset)
        self.num_workers = int(num_workers)
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches of each process already trained)
        self._saved_world_size = 1  # processes that trained them (not recorded before DDP resumed exactly)
        self._splits: Splits | None = None

    # ----------------------------------------------------------------- subclass hooks
    @abstractmethod
    def _build_splits(self) -> Splits:
        """Load the data and build the train/val/test datasets (called once)."""

    @abstractmethod
    def _calibration_dataset(self, positions: torch.Tensor) -> Dataset:
        """Un-augmented dataset over ``positions`` (indices into the training split)."""

    def _no_test_message(self) -> str:
        return f"{type(self).__name__} has no test split"

    # ----------------------------------------------------------------- Lightning API
    def setup(self, stage: str | None = None) -> None:
        """Load the data and build all splits; later calls are free."""
        if self._splits is None:
            self._splits = self._build_splits()

    @property
    def splits(self) -> Splits:
        """The built datasets (runs :meth:`setup` on first access)."""
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits

    @property
    def train_dataset(self) -> Dataset:
        """Training split (after the validation hold-out and ``train_subset``)."""
        return self.splits.train

    @property
    def val_dataset(self) -> Dataset:
        """Validation split, held out from the training set."""
        return self.splits.val

    @property
    def test_dataset(self) -> Dataset | None:
        """Test split, or None when the dataset has none."""
        return self.splits.test

    def train_dataloader(self) -> DataLoader:
        """Shuffled training loader with ``drop_last=True``."""
        dataset = self.train_dataset
        world, rank = self._world()
        sampler = EpochShuffleSampler(dataset, self.seed, num_replicas=world, rank=rank)
        if sampler.num_samples < self.batch_size:  # the share of one process
            n = len(dataset)  # type: ignore[arg-type]
            share = f"each of the {world} processes gets {sampler.num_samples} of the {n} training samples"
            raise DataError(
                f"{share if world > 1 else f'training split has {n} samples'}, fewer than batch_size="
                f"{self.batch_size}; with drop_last=True there would be no batches. Lower batch_size or raise "
                f"train_subset{' or use fewer devices' if world > 1 else ''}."
            )
        if self._resume_at is not None:
            (epoch, batches), saved_world = self._resume_at, self._saved_world_size
            if batches and saved_world != world:
                warnings.warn(
                    f"the checkpoint stopped in epoch {epoch} after {batches} batches a process on {saved_world} "
                    f"process(es); this run has {world}: each process skips {batches} batches of its own share, which "
                    "are not exactly the images trained before. An exact continuation needs the same number of "
                    "processes (or a checkpoint at an epoch's end).",
                    stacklevel=2,
                )
            # The epoch is set now, not only by Lightning's set_epoch: loader workers draw their first
            # indices when the iterator is created, before Lightning calls set_epoch.
            sampler.set_epoch(epoch)
            sampler.resume_at(epoch, batches * self.batch_size)
            self._resume_at = None
        return self._loader(dataset, self.batch_size, drop_last=True, sampler=sampler)

    # ----------------------------------------------------------------- resume
    def resume_at(self, epoch: int, batches: int) -> None:
        """Continue training at ``(epoch, batches of it each process already trained)``.

        The system calls this when Lightning restores a checkpoint, with the position computed from
        the checkpoint's loop state (:func:`fairnas.run.resume.checkpoint_position`), so a resumed run
        starts there and skips those batches: it sees exactly the batches an uninterrupted run would
        (under DDP too: every rank skips its own share, see :class:`EpochShuffleSampler`).
        """
        self._resume_at = (int(epoch), int(batches))

    def state_dict(self) -> dict[str, int]:
        """The number of processes sharing the data, which a mid-epoch continuation needs to skip exactly."""
        trainer = getattr(self, "trainer", None)
        return {} if trainer is None else {"world_size": trainer.world_size}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        # Checkpoints written before the position came from the loop state also hold "epoch" and "batches".
        self._saved_world_size = int((state_dict or {}).get("world_size", 1))

    def val_dataloader(self) -> DataLoader:
        """Validation loader (held out from training data), in fixed order."""
        return self._loader(self.val_dataset, self.eval_batch_size, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        """Test loader in fixed order.

        Raises:
            DataError: If the dataset has no test split.
        """
        test = self.test_dataset
        if test is None:
            raise DataError(self._no_test_message())
        return self._loader(test, self.eval_batch_size, drop_last=False)

    def calibration_dataloader(self, num_batches: int, seed: int, batch_size: int | None = None) -> DataLoader:
        """Loader over a fixed seeded random subset of the training split, without augmentation.

        Used for BatchNorm statistics recalibration of sampled sub-networks.

        Args:
            num_batches: Number of batches; the subset has ``num_batches * batch_size`` images
                (capped at the training-split size, with a warning).
            seed: Selects the subset; the same seed always gives the same images in the same order.
            batch_size: Defaults to the training ``batch_size`` (BN statistics depend on it).

        Returns:
            A non-shuffled DataLoader of ``(x, y)`` batches.
        """
        if num_batches < 1:
            raise DataError(f"num_batches must be >= 1, got {num_batches}")
        batch_size = self.batch_size if batch_size is None else int(batch_size)
        n_train = len(self.train_dataset)  # type: ignore[arg-type]
        wanted = num_batches * batch_size
        if wanted > n_train:
            warnings.warn(
                f"calibration wants {wanted} images but the training split has {n_train}; using all of them",
                stacklevel=2,
            )
        generator = torch.Generator().manual_seed(derive_seed(seed, STREAM_CALIBRATION))
        positions = torch.randperm(n_train, generator=generator)[: min(wanted, n_train)]
        dataset = self._calibration_dataset(positions)
        return self._loader(dataset, batch_size, drop_last=False, persistent=False)

    # ----------------------------------------------------------------- helpers
    def _loader(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        drop_last: bool,
        persistent: bool = True,
        sampler: Sampler | None = None,
    ) -> DataLoader:
        # The order is the sampler's, never DataLoader's own shuffle. Training: an EpochShuffleSampler, which
        # Lightning keeps under DDP. Evaluation: none, and Lightning swaps in a DistributedSampler under DDP.
        collate: Callable[[Any], Any] | None = identity_collate if self._batched else None
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            drop_last=drop_last,
            num_workers=workers,
            collate_fn=collate,
            sampler=sampler,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=seed_worker if workers > 0 else None,
            persistent_workers=persistent and workers > 0,
        )

    def _subset_train(self, train_idx: torch.Tensor) -> torch.Tensor:
        if self.train_subset is not None:
            return train_idx[: self.train_subset]
        return train_idx

    def _world(self) -> tuple[int, int]:
        """(number of processes, this one's rank) of the attached trainer; (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        return (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)

    def _global_rank(self) -> int:
        # Under DDP each rank should draw different augmentations; the trainer is attached
        # (and the process group up) before Lightning calls setup().
        return self._world()[1]
