"""The network to deploy, read from a training checkpoint.

Two kinds of checkpoint hold one:

* a stand-alone run (``train.py arch=...``): the retrained network, loaded as it is;
* a supernet run with an architecture (``arch=...``): the path's inherited weights, with its
  BatchNorm statistics recalibrated exactly as the search does (the mean over ``bn_batches``
  fixed training batches chosen by ``calibration_seed``), so the exported network computes what
  search.py scored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fairnas.errors import ConfigError
from fairnas.models import ChildNet, SearchSpace, build_child
from fairnas.models.bn import bn_layers, recalibrate
from fairnas.run.checkpoint import (
    file_digest,
    load_checkpoint,
    load_weights,
    read_record,
    record_space,
    supernet_from_checkpoint,
)
from fairnas.run.record import RunRecord

log = logging.getLogger("fairnas")


@dataclass
class Deployable:
    """A plain network (eval mode, float32, contiguous, on the CPU) and what it is.

    Attributes:
        net: The network: stem, the architecture's blocks, head.
        space: Its search space.
        arch: The architecture (``'-'``-joined choice indices).
        input_shape: ``(channels, height, width)`` of one input image.
        num_classes: Outputs of the classifier.
        source: ``standalone`` (retrained weights) or ``supernet`` (inherited weights, BN recalibrated).
        info: Provenance for the files written beside the export (checkpoint, digest, calibration).
    """

    net: ChildNet
    space: SearchSpace
    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    source: str
    info: dict[str, Any]


def network_from_checkpoint(
    path: str | Path,
    arch: Any = None,
    bn_batches: int = 10,
    calibration_seed: int = 0,
    allow_datasets: Sequence[str] = (),
    input_size: int | None = None,
    allow_blocks: Sequence[str] = (),
) -> Deployable:
    """The network a checkpoint holds (stand-alone run), or the path ``arch`` of a supernet checkpoint.

    Args:
        path: A ``train.py`` checkpoint.
        arch: For a supernet checkpoint, the architecture to take (any form the space reads: indices,
            ``'-'``-joined, a named model). For a stand-alone checkpoint, None or its own architecture.
        bn_batches: Training batches for the BN recalibration of a supernet path (as ``search.py``'s
            ``evaluator.bn_batches``).
        calibration_seed: Which training batches (as ``search.py``'s ``evaluator.calibration_seed``).
        allow_datasets: Datamodule classes from outside fairnas the checkpoint may name.
        allow_blocks: Block kinds of a module of the user's own the checkpoint's space may use
            (nothing a checkpoint names is imported otherwise).
        input_size: Height and width of the input (default: the training data's).

    Raises:
        CheckpointError: The file is not a fairnas checkpoint, or does not match its own record.
        ConfigError: ``arch`` missing for a supernet, or another architecture than a stand-alone run's.
        ArchitectureError: ``arch`` is not an architecture of the checkpoint's space.
    """
    ckpt = load_checkpoint(path)
    record = read_record(ckpt, path)
    info: dict[str, Any] = {"checkpoint": str(path), "checkpoint_sha256_16": file_digest(path)}
    if record.arch:
        deployable = _standalone(path, ckpt, record, arch, info, allow_blocks)
    else:
        deployable = _supernet_path(path, ckpt, record, arch, bn_batches, calibration_seed, allow_datasets, info,
                                    allow_blocks)  # fmt: skip
    if input_size is not None:
        if type(input_size) is not int or input_size < 1:
            raise ConfigError(f"input_size must be a positive whole number of pixels or null, got {input_size!r}")
        c, _, _ = deployable.input_shape
        deployable.input_shape = (c, input_size, input_size)
    deployable.net = deployable.net.to(torch.float32, memory_format=torch.contiguous_format).eval()
    return deployable


def _data_image_size(record: RunRecord, allow: Sequence[str], space: SearchSpace) -> int:
    """The training data's image size: the datamodule's setting (nothing is read from disk)."""
    try:
        return int(record.data.build(allow).image_size)
    except Exception as err:  # an unknown or unbuildable datamodule: the space's nominal size, said so
        log.warning("could not tell the training data's image size (%s); using the space's input_size %d (give "
                    "input_size=... if the network was trained on another size)", err, space.input_size)  # fmt: skip
        return space.input_size


def _standalone(
    path: str | Path, ckpt: dict[str, Any], record: RunRecord, arch: Any, info: dict[str, Any], allow_blocks: Any
) -> Deployable:
    space = record_space(record, path, allow_blocks)
    own = space.parse_arch(record.arch)
    if arch is not None and space.parse_arch(arch) != own:
        raise ConfigError(
            f"{path} holds the stand-alone network arch={space.format_arch(own)}, not arch={arch}: drop arch=... to "
            "export the network it holds, or give a supernet checkpoint to take another architecture from it"
        )
    net = build_child(space, own, record.num_classes, record.in_channels)
    load_weights(net, ckpt, "net.", path, f"its own architecture {record.arch}")
    size = _data_image_size(record, (), space)
    return Deployable(net, space, space.format_arch(own), (record.in_channels, size, size), record.num_classes,
                      "standalone", info)  # fmt: skip


def _supernet_path(
    path: str | Path,
    ckpt: dict[str, Any],
    record: RunRecord,
    arch: Any,
    bn_batches: int,
    calibration_seed: int,
    allow: Sequence[str],
    info: dict[str, Any],
    allow_blocks: Sequence[str],
) -> Deployable:
    supernet = supernet_from_checkpoint(ckpt, record, path, allow_blocks)
    space = supernet.space
    if arch is None:
        example = space.format_arch((0,) * space.num_layers)
        raise ConfigError(
            f"{path} is a supernet: it holds every architecture of {space.name!r}. Give the one to export, "
            f"arch=<choices> (e.g. arch={example}, or the 'arch' of search.py's best.yaml)"
        )
    chosen = space.parse_arch(arch)
    if type(bn_batches) is not int or bn_batches < 1:
        raise ConfigError(f"bn_batches={bn_batches!r}: BN recalibration needs at least 1 training batch")
    datamodule = record.data.build(allow)
    datamodule.setup("fit")
    net = supernet.export(chosen).eval()
    batches = [x.to(torch.float32) for x, _ in datamodule.calibration_dataloader(bn_batches, seed=calibration_seed)]
    with torch.no_grad():
        recalibrate(net, bn_layers([net]), batches)
    net.eval()
    size = int(datamodule.image_size)
    info.update(bn_batches=bn_batches, calibration_seed=calibration_seed, dataset=record.data.name)
    return Deployable(net, space, space.format_arch(chosen), (record.in_channels, size, size), record.num_classes,
                      "supernet", info)  # fmt: skip
