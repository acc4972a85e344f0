"""The supernet as an evaluator: one-shot accuracy of any architecture, with BN recalibration.

For each architecture: reset the BatchNorm statistics of its path and re-estimate them as the
exact mean over a fixed, seeded set of *training* batches (``bn_batches`` of them), then measure
top-1 (and top-5 where there are more than 5 classes) on the validation split held out from the
training set. The supernet's own statistics are restored after every call, so evaluating never
changes what a checkpoint holds. Results are cached by architecture string (see
:class:`ResultCache`), so a re-run or an interrupted search evaluates nothing twice.

The architectures asked for together are evaluated in one pass over the data
(:meth:`SupernetEvaluator.evaluate_many`): their paths are merged on common prefixes, each prefix
node keeps its own recalibrated BN statistics, and the numbers are bit for bit those of
:meth:`SupernetEvaluator.evaluate_reference`, which evaluates one path at a time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from fairnas.errors import ConfigError
from fairnas.models import CostModel, SearchSpace, Supernet, layout
from fairnas.models.bn import bn_layers, preserved_stats, recalibrate
from fairnas.models.path_tree import PathTree
from fairnas.search.cache import ResultCache
from fairnas.search.spread import Spread

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
        chunk_size: Validation batches go through the network in chunks of this many images
            (``"auto"``: 100 on the CPU, where a chunk's activations stay in cache, which made
            validation 2x faster on fairnas_mini; whole batches elsewhere; None: whole batches).
            Evaluation-mode layers treat images independently, so the logits are the same; the
            first batch checks that they are bit for bit, and whole batches are used if not.
        spread: The processes sharing the evaluations (:mod:`fairnas.search.spread`); default: this
            one alone. Every process must build its evaluator the same way and ask for the same
            architectures in the same order; each evaluates its share, and all get every result.
        latency_model: ``arch -> ms``, a predicted latency (a latency table's
            :meth:`fairnas.deploy.LatencyTable.predictor`) given as ``latency_ms`` instead of
            measuring here (exclusive with ``latency``). Predictions are not cached: they are
            cheap, and a new table must not meet an old one's numbers.
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
        chunk_size: int | str | None = "auto",
        spread: Spread | None = None,
        latency_model: Callable[[Sequence[int]], float] | None = None,
    ) -> None:
        if latency and latency_model is not None:
            raise ConfigError(
                "evaluator.latency=true measures latency here, and a latency table predicts it: give one of them"
            )
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
        self.latency_model = latency_model
        self.spread = spread or Spread()
        self.input_size = input_size or self.space.input_size
        self.num_classes = supernet.num_classes
        self.evaluations = 0  # architectures evaluated by this object (not read from the cache)
        param = next(supernet.parameters())
        self.device, self.dtype = param.device, param.dtype
        if chunk_size == "auto":
            chunk_size = 100 if self.device.type == "cpu" else None
        if not (chunk_size is None or (type(chunk_size) is int and chunk_size >= 1)):
            raise ConfigError(f"evaluator chunk_size must be a positive integer, 'auto' or null, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self._chunks_checked = False  # whether chunked logits were compared with whole-batch ones yet

    def costs(self, arch: Sequence[int]) -> dict[str, float]:
        """Cheap objectives, checked against limits before any accuracy is measured.

        Latency (when enabled) is measured here, once, and cached, without evaluating accuracy.
        """
        out = {"madds": float(self.cost_model.madds(arch)), "params": float(self.cost_model.params(arch))}
        if self.latency:
            key = self.space.format_arch(arch)
            record = self.cache.get(key) or {}
            if "latency_ms" not in record:
                record.update(out, arch=key, latency_ms=self._latency(arch))
                self.cache.put(key, record)
            out["latency_ms"] = record["latency_ms"]
        elif self.latency_model is not None:
            out["latency_ms"] = float(self.latency_model(arch))
        return out

    def _costs_record(self, arch: Sequence[int]) -> dict[str, Any]:
        return {"arch": self.space.format_arch(arch), "madds": self.cost_model.madds(arch),
                "params": self.cost_model.params(arch)}  # fmt: skip

    def accuracy(self, archs: Sequence[Sequence[int]]) -> list[float]:
        """Top-1 one-shot accuracies of ``archs``; those not cached are evaluated together in one pass."""
        return [r["acc1"] for r in self.results(archs)]

    def result(self, arch: Sequence[int]) -> dict[str, Any]:
        """Every measured number of one architecture, from the cache when present."""
        return self.results([arch])[0]

    def results(self, archs: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        """Every measured number of each of ``archs``, from the cache when present.

        The architectures missing from the cache are evaluated together (:meth:`evaluate_many`,
        one pass over the data that shares their common prefixes), then cached one by one. Spread
        over processes, each evaluates its share of them and every process gets all the results.
        """
        keys = [self.space.format_arch(a) for a in archs]
        records = {k: self.cache.get(k) or {} for k in keys}
        todo = {k: tuple(int(c) for c in a) for k, a in zip(keys, archs) if "acc1" not in records[k]}
        if todo:
            mine = self.spread.share(list(todo.values()))
            measured = self.spread.gather(self.evaluate_many(mine) if mine else [], len(todo))
            self.evaluations += len(todo) - len(mine)  # the other processes' share
            for key, result in zip(todo, measured, strict=True):
                records[key].update(result)
        for key, arch in dict(zip(keys, archs)).items():  # each architecture once
            record = records[key]
            if key in todo or (self.latency and "latency_ms" not in record):
                if self.latency and "latency_ms" not in record:
                    record["latency_ms"] = self._latency(arch)
                record.update(self._costs_record(arch))
                self.cache.put(key, record)
        if self.latency_model is not None:
            return [{**records[k], "latency_ms": float(self.latency_model(a))} for k, a in zip(keys, archs)]
        return [records[k] for k in keys]

    def evaluate(self, arch: Sequence[int]) -> dict[str, float]:
        """Recalibrates the path's BN statistics, measures accuracy, restores the supernet."""
        return self.evaluate_many([arch])[0]

    @torch.no_grad()
    def evaluate_many(self, archs: Sequence[Sequence[int]]) -> list[dict[str, float]]:
        """:meth:`evaluate_reference` of each of ``archs``, with the same numbers, in one pass over the data.

        The paths form a prefix tree (stem, then one node per layer choice, then the head), walked
        depth-first for every batch: a layer shared by several paths runs once per batch, and only
        the layers after a path's last shared one run for it alone. Each node holds its own BN
        statistics, recalibrated on the same calibration batches in the same order as the
        reference does, which is exact because a layer's BN statistics depend only on its prefix
        (train-mode BN normalises with batch statistics, so the running statistics never feed back).
        The nodes' statistics are swapped into the supernet's BN layers by reference while a node
        runs, and the supernet's own are put back at the end.
        """
        paths = [tuple(int(c) for c in a) for a in archs]
        unique = list(dict.fromkeys(paths))
        tree = PathTree(self.supernet, unique)
        top5 = self.num_classes > 5
        scores = [_Score(top5) for _ in unique]
        tree.calibrate(self._batch(x) for x, _ in self.calibration)
        with tree.installed():
            tree.set_training(False)
            for x, y in self.validation:
                for leaf, logits in enumerate(self._logits(tree, self._batch(x))):
                    scores[leaf].add(logits, y)
        self.evaluations += len(unique)
        by_path = {p: s.result() for p, s in zip(unique, scores, strict=True)}
        return [dict(by_path[p]) for p in paths]

    def _logits(self, tree: PathTree, x: Tensor) -> list[Tensor]:
        """Every path's logits for the validation batch ``x``, computed in chunks where that is exact."""
        chunk = self.chunk_size
        if chunk is None or chunk >= len(x):
            return tree.collect(x)
        parts = [tree.collect(x[i : i + chunk]) for i in range(0, len(x), chunk)]
        logits = [torch.cat([p[leaf] for p in parts]) for leaf in range(tree.num_paths)]
        if not self._chunks_checked:
            self._chunks_checked = True
            whole = tree.collect(x)
            if not all(torch.equal(a, b) for a, b in zip(logits, whole, strict=True)):
                self.chunk_size = None  # this machine's kernels depend on the batch size: whole batches only
                return whole
        return logits

    @torch.no_grad()
    def evaluate_reference(self, arch: Sequence[int]) -> dict[str, float]:
        """The straightforward evaluation of one path: whole-path forwards, calibration then validation.

        What :meth:`evaluate_many` must equal exactly; kept as the reference of the tests and of
        ``benchmarks/bench_evaluator.py``. Does not count in :attr:`evaluations`.
        """
        arch = tuple(int(c) for c in arch)
        layers = bn_layers(self.supernet.path_modules(arch))
        score = _Score(self.num_classes > 5)
        with preserved_stats(layers):
            recalibrate(lambda x: self.supernet(x, arch), layers, (self._batch(x) for x, _ in self.calibration))
            for x, y in self.validation:
                score.add(self.supernet(self._batch(x), arch), y)
        return score.result()

    def _batch(self, x: Tensor) -> Tensor:
        return layout.as_layout(x.to(self.dtype), self.memory_format)

    def _latency(self, arch: Sequence[int]) -> float:
        """The latency of ``arch``, measured on the main process only: a clock differs between processes."""
        return self.spread.agree(lambda: self.measure_latency(arch))

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


class _Score:
    """Top-1 (and top-5) hits and the summed cross-entropy of one architecture, batch after batch."""

    def __init__(self, top5: bool) -> None:
        self.top5 = top5
        self.correct1 = self.correct5 = self.total = 0
        self.loss = 0.0

    def add(self, logits: Tensor, y: Tensor) -> None:
        self.loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        if self.top5:
            best = logits.topk(5, dim=1).indices
            self.correct1 += int((best[:, 0] == y).sum())
            self.correct5 += int((best == y[:, None]).any(1).sum())
        else:
            self.correct1 += int((logits.argmax(1) == y).sum())
        self.total += len(y)

    def result(self) -> dict[str, float]:
        out = {"acc1": self.correct1 / self.total, "loss": self.loss / self.total}
        if self.top5:
            out["acc5"] = self.correct5 / self.total
        return out
