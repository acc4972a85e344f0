"""The supernet as an evaluator: one-shot accuracy of any architecture, with BN recalibration.

For each architecture: reset the BatchNorm statistics of its path and re-estimate them as the
exact mean over a fixed, seeded set of *training* batches (``bn_batches`` of them), then measure
top-1 (and top-5 where there are more than 5 classes) on the validation split held out from the
training set. The supernet's own statistics are restored after every call, so evaluating never
changes what a checkpoint holds. Results are cached by architecture string (see
:class:`ResultCache`), so a re-run or an interrupted search evaluates nothing twice.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from fairnas.config_error import ConfigError
from fairnas.models import CostModel, SearchSpace, Supernet, layout
from fairnas.models.bn import bn_layers, preserved_stats, recalibrate
from fairnas.search.cache import ResultCache

Batch = tuple[Tensor, Tensor]


class DeviceBatches:
    """Re-iterable view of the first ``limit`` batches of ``loader`` (all if None) on ``device``.

    With ``preload`` the batches are read once and kept on the device (small data: no loading
    cost per architecture); without it they stream from the loader on every pass (large data
    such as ImageNet, where 10,000 validation images would not fit).
    """

    def __init__(self, loader: Iterable, limit: int | None, device: torch.device, preload: bool = True) -> None:
        self.loader, self.limit, self.device = loader, limit, device
        self.batches = list(self._stream()) if preload else None

    def _stream(self) -> Iterator[Batch]:
        for i, (x, y) in enumerate(self.loader):
            if self.limit is not None and i >= self.limit:
                break
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches) if self.batches is not None else self._stream()

    def __len__(self) -> int:
        if self.batches is not None:
            return len(self.batches)
        n = len(self.loader)
        return n if self.limit is None else min(n, self.limit)


def materialise(loader: Iterable, limit: int | None, device: torch.device) -> list[Batch]:
    """The first ``limit`` batches of ``loader`` (all if None), moved to ``device`` once."""
    return list(DeviceBatches(loader, limit, device).batches or [])


class SupernetEvaluator:
    """Accuracy (and costs) of architectures with a trained supernet's weights.

    Args:
        supernet: The trained supernet (put in eval mode here).
        calibration: Training batches for BN recalibration (fixed: the same for every architecture).
        validation: Validation batches (held out from the training set, never the test set).
        cache: Where results persist; None keeps them in memory only.
        cost_model: Exact MAdds / params of an architecture.
        latency: Also measure latency (ms, median of ``latency_repeats`` batch-1 forwards of the
            exported network on ``device``).
        latency_repeats: Timed forwards per architecture (after 3 warm-up runs).
        input_size: Resolution of the latency input (default: the space's nominal one).
        memory_format: Layout of the supernet and the batches: ``channels_last`` (default; faster
            on CPU, see :mod:`fairnas.models.layout`) or ``contiguous``. The supernet passed in
            is converted in place. Latency is measured in this layout too.
    """

    def __init__(
        self,
        supernet: Supernet,
        calibration: Iterable[Batch],
        validation: Iterable[Batch],
        cost_model: CostModel,
        cache: ResultCache | None = None,
        latency: bool = False,
        latency_repeats: int = 30,
        input_size: int | None = None,
        memory_format: str = "channels_last",
    ) -> None:
        limit = getattr(validation, "limit", None)
        if limit is not None and limit < 1:
            raise ConfigError(
                f"evaluator.val_batches={limit}: at least 1 validation batch is needed to score an architecture "
                "(null: the whole held-out split)"
            )
        if len(validation) == 0:
            raise ConfigError("the validation split is empty: nothing to evaluate architectures on (dataset.val_size)")
        self.memory_format = memory_format
        self.supernet = layout.to_layout(supernet, memory_format).eval()
        self.space: SearchSpace = supernet.space
        self.calibration = calibration
        self.validation = validation
        self.cost_model = cost_model
        self.cache = cache if cache is not None else ResultCache(None)
        self.latency = latency
        self.latency_repeats = latency_repeats
        self.input_size = input_size or self.space.input_size
        self.num_classes = supernet.num_classes
        self.evaluations = 0  # architectures evaluated by this object (not read from the cache)
        param = next(supernet.parameters())
        self.device, self.dtype = param.device, param.dtype

    def costs(self, arch: Sequence[int]) -> dict[str, float]:
        """Cheap objectives, checked against limits before any accuracy is measured.

        Latency (when enabled) is measured here, once, and cached, without evaluating accuracy.
        """
        out = {"madds": float(self.cost_model.madds(arch)), "params": float(self.cost_model.params(arch))}
        if self.latency:
            key = self.space.format_arch(arch)
            record = self.cache.get(key) or {}
            if "latency_ms" not in record:
                record.update(out, arch=key, latency_ms=self.measure_latency(arch))
                self.cache.put(key, record)
            out["latency_ms"] = record["latency_ms"]
        return out

    def _costs_record(self, arch: Sequence[int]) -> dict[str, Any]:
        return {"arch": self.space.format_arch(arch), "madds": self.cost_model.madds(arch),
                "params": self.cost_model.params(arch)}  # fmt: skip

    def accuracy(self, archs: Sequence[Sequence[int]]) -> list[float]:
        """Top-1 one-shot accuracies of ``archs`` (evaluating only those not cached)."""
        return [self.result(a)["acc1"] for a in archs]

    def result(self, arch: Sequence[int]) -> dict[str, Any]:
        """Every measured number of one architecture, from the cache when present."""
        key = self.space.format_arch(arch)
        record = self.cache.get(key) or {}
        if "acc1" in record and (not self.latency or "latency_ms" in record):
            return record
        if "acc1" not in record:
            record.update(self.evaluate(arch))
        if self.latency and "latency_ms" not in record:
            record["latency_ms"] = self.measure_latency(arch)
        record.update(self._costs_record(arch))
        self.cache.put(key, record)
        return record

    @torch.no_grad()
    def evaluate(self, arch: Sequence[int]) -> dict[str, float]:
        """Recalibrates the path's BN statistics, measures accuracy, restores the supernet."""
        arch = tuple(int(c) for c in arch)
        layers = bn_layers(self.supernet.path_modules(arch))
        with preserved_stats(layers):
            recalibrate(lambda x: self.supernet(x, arch), layers, (self._batch(x) for x, _ in self.calibration))
            correct1 = correct5 = total = 0
            loss = 0.0
            top5 = self.num_classes > 5
            for x, y in self.validation:
                logits = self.supernet(self._batch(x), arch)
                loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                if top5:
                    best = logits.topk(5, dim=1).indices
                    correct1 += int((best[:, 0] == y).sum())
                    correct5 += int((best == y[:, None]).any(1).sum())
                else:
                    correct1 += int((logits.argmax(1) == y).sum())
                total += len(y)
        self.evaluations += 1
        out = {"acc1": correct1 / total, "loss": loss / total}
        if top5:
            out["acc5"] = correct5 / total
        return out

    def _batch(self, x: Tensor) -> Tensor:
        return layout.as_layout(x.to(self.dtype), self.memory_format)

    @torch.no_grad()
    def measure_latency(self, arch: Sequence[int]) -> float:
        """Median wall time (ms) of a batch-1 forward of the exported network on this device."""
        net = self.supernet.export(arch).eval()
        size = self.input_size
        x = self._batch(torch.randn(1, self.supernet.in_channels, size, size, device=self.device, dtype=self.dtype))
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        for _ in range(3):
            net(x)
        times = []
        for _ in range(self.latency_repeats):
            sync()
            start = time.perf_counter()
            net(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
