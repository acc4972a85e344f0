"""Ranking quality while the supernet trains: Kendall tau of its one-shot accuracies against a ground truth.

:class:`RankingMonitor` scores a fixed set of K architectures of a ground truth
(:mod:`fairnas.ranking.truth`) with the supernet's current weights, the way validation and the
search do (:class:`~fairnas.search.evaluator.SupernetEvaluator`: BN statistics re-estimated per
architecture on fixed calibration batches, the supernet's own statistics untouched), and logs how
well that ranks them, on the axis of single-path passes (forward + backward of one path), on which
samplers compare at equal compute.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from fairnas.analysis.ranking import bootstrap_ci, kendall_tau, partial_kendall_tau, spearman_rho, top_k_precision
from fairnas.analysis.sampling import one_per_cost_bin
from fairnas.arch import Arch, format_arch
from fairnas.data.registry import dataset_name
from fairnas.errors import ConfigError
from fairnas.models import CostModel
from fairnas.ranking.truth import GroundTruth, load_ground_truth
from fairnas.search.evaluator import DeviceBatches, SupernetEvaluator
from fairnas.utils import write_json_atomic, write_text_atomic

log = logging.getLogger("fairnas")

METRICS = ("kendall_tau", "kendall_tau_low", "kendall_tau_high", "spearman", "partial_tau", "top_k_precision",
           "madds_kendall_tau")  # fmt: skip
"""The ``rank/*`` series logged at every evaluation (with ``rank/paths``, the x-axis, and ``rank/seconds``)."""


def choose_archs(truth: GroundTruth, cost_model: CostModel, num_archs: int | None, seed: int) -> list[Arch]:
    """K distinct architectures of the table, stratified by MAdds (:func:`~fairnas.analysis.sampling.one_per_cost_bin`):
    all of them if K is None or at least the table's size. Returned in cost order."""
    return one_per_cost_bin(truth.accuracy, cost_model.madds, num_archs, seed)


class RankingMonitor(Callback):
    """Logs how well the supernet ranks a fixed set of architectures of a ground truth, while it trains.

    At the start (``at_start``), every ``every_n_paths`` single-path passes, at the end of every
    ``every_n_epochs``-th epoch and at the end of training, it scores the K architectures and logs to
    every logger ``rank/kendall_tau`` (with its bootstrap interval ``rank/kendall_tau_low``/``_high``),
    ``rank/spearman``, ``rank/partial_tau`` (Kendall's partial tau with MAdds held fixed: ordering
    beyond size), ``rank/top_k_precision`` and ``rank/madds_kendall_tau`` (the cost proxy's tau, for
    reference), against ``rank/paths``, the single-path passes trained so far. It writes
    ``<output_dir>/ranking/archs.csv`` (one row per architecture and evaluation),
    ``ranking/metrics.csv`` (one row per evaluation), ``ranking/tau.png`` and ``ranking/summary.json``
    (the monitor's time and its share of the run).

    It never changes what is trained: it reads the weights under ``torch.no_grad`` with the
    supernet's BN statistics restored, draws nothing from torch's global generator (forked), and puts
    the supernet back in training mode. Under DDP the architectures are spread over the ranks and the
    accuracies summed back, so all ranks log the same numbers. Its history is part of the checkpoint,
    so a resumed run continues the same curve. Evaluations happen at a step's end, before the step's
    checkpoints are written.

    Args:
        ground_truth: ``auto`` (the built-in table of the run's space), ``fairnas_mini``,
            ``nas_bench_macro``, or the path of a CSV with ``arch`` and ``truth_column``.
        truth_column: The accuracy column of a CSV.
        truth_dataset: The dataset (``conf/dataset`` name) a CSV's accuracies were measured on; checked
            against the run's when given.
        check_dataset: Refuse a run on data the ground truth does not hold for.
        num_archs: K, the architectures scored (stratified by MAdds); null: every one of the table.
        seed: Draws the K architectures (the same for every run of a sweep by default, so runs compare
            on the same architectures).
        every_n_paths: Evaluate whenever the passes cross a multiple of this (null: not by passes).
        every_n_epochs: Evaluate at the end of every this-many epochs (null: not by epochs).
        at_start: Evaluate the untrained supernet too (passes 0).
        top_k: k of ``rank/top_k_precision``.
        bn_batches: Training batches for the BN recalibration of each architecture.
        calibration_seed: Which training batches (fixed for the run).
        val_batches: Validation batches per architecture (null: the whole held-out split).
        n_boot: Bootstrap replicates of the tau interval (0: no interval).
        preload: Keep the calibration and validation batches on the device (false: stream them from the
            loaders at every evaluation, for data too large to hold, such as ImageNet's validation split).
        output_dir: Where ``ranking/`` goes (default: the trainer's ``default_root_dir``).
    """

    def __init__(
        self,
        ground_truth: str = "auto",
        truth_column: str = "accuracy",
        truth_dataset: str | None = None,
        check_dataset: bool = True,
        num_archs: int | None = None,
        seed: int = 0,
        every_n_paths: int | None = None,
        every_n_epochs: int | None = 1,
        at_start: bool = False,
        top_k: int = 5,
        bn_batches: int = 10,
        calibration_seed: int = 0,
        val_batches: int | None = None,
        n_boot: int = 1000,
        preload: bool = True,
        output_dir: str | None = None,
    ) -> None:
        for name, value in (("num_archs", num_archs), ("every_n_paths", every_n_paths),
                            ("every_n_epochs", every_n_epochs), ("val_batches", val_batches)):  # fmt: skip
            if value is not None and (type(value) is not int or value < 1):
                raise ConfigError(f"callbacks.ranking.{name} must be a positive integer or null, got {value!r}")
        if num_archs is not None and num_archs < 3:
            raise ConfigError(f"callbacks.ranking.num_archs={num_archs}: a ranking needs at least 3 architectures")
        if type(top_k) is not int or top_k < 1:
            raise ConfigError(f"callbacks.ranking.top_k must be a positive integer, got {top_k!r}")
        if type(n_boot) is not int or n_boot < 0:
            raise ConfigError(f"callbacks.ranking.n_boot must be 0 (no interval) or a positive integer, got {n_boot!r}")
        if type(bn_batches) is not int or bn_batches < 1:
            raise ConfigError(f"callbacks.ranking.bn_batches must be a positive integer, got {bn_batches!r}")
        self.spec = str(ground_truth)
        self.truth_column, self.truth_dataset, self.check_dataset = truth_column, truth_dataset, bool(check_dataset)
        self.num_archs, self.seed = num_archs, int(seed)
        self.every_n_paths, self.every_n_epochs, self.at_start = every_n_paths, every_n_epochs, bool(at_start)
        self.top_k, self.bn_batches, self.calibration_seed = top_k, bn_batches, int(calibration_seed)
        self.val_batches, self.n_boot, self.preload, self.output_dir = val_batches, n_boot, bool(preload), output_dir
        self.truth: GroundTruth | None = None
        self.archs: list[Arch] = []
        self.history: list[dict[str, Any]] = []  # one entry per evaluation: paths, epoch, step, seconds, accuracies
        self.seconds = 0.0  # spent evaluating, over every segment of the run (resumes included)
        self._evaluator: SupernetEvaluator | None = None
        self._cost_model: CostModel | None = None
        self._true: list[float] = []  # the ground truth of each of the K architectures
        self._madds: list[int] = []
        self._fit_started = 0.0
        self._segment_seconds = 0.0  # spent evaluating in this process's fit

    # ----------------------------------------------------------------- set-up
    def prepare(self, space: Any, datamodule: Any) -> None:
        """Loads and checks the ground truth and draws the K architectures: before training, one clear error."""
        self.truth = load_ground_truth(self.spec, space, self.truth_column, self.truth_dataset)
        shape = (datamodule.num_classes, datamodule.image_size, datamodule.in_channels)
        self.truth.check(space, dataset_name(type(datamodule)), self.check_dataset, shape)
        self._cost_model = CostModel.create(space, datamodule.image_size, datamodule.num_classes,
                                            datamodule.in_channels)  # fmt: skip
        self.archs = choose_archs(self.truth, self._cost_model, self.num_archs, self.seed)
        self._true = [self.truth(a) for a in self.archs]
        self._madds = [self._cost_model.madds(a) for a in self.archs]
        if len(self.archs) < 3:
            raise ConfigError(
                f"ground truth {self.truth.name!r} holds {len(self.archs)} architectures: a ranking needs 3"
            )
        if self.top_k > len(self.archs):
            raise ConfigError(
                f"callbacks.ranking.top_k={self.top_k} but only {len(self.archs)} architectures are scored: lower it"
            )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        supernet = getattr(pl_module, "supernet", None)
        if supernet is None or not hasattr(pl_module, "block_usage"):
            raise ConfigError(
                "callbacks=ranking scores architectures with a supernet, but this run trains one network stand-alone "
                "(arch=...): drop callbacks=ranking"
            )
        if self.truth is None:  # not prepared by train.py: built here (a Trainer of the user's own)
            self.prepare(supernet.space, trainer.datamodule)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):  # rank/* against the passes, not W&B's step
                    # Each by its full name: Lightning defined the glob "*" (trainer/global_step) already, and
                    # of two matching globs W&B may pick either.
                    logger.experiment.define_metric("rank/paths")
                    for key in (*METRICS, "seconds"):
                        logger.experiment.define_metric(f"rank/{key}", step_metric="rank/paths")

    def _build_evaluator(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> SupernetEvaluator:
        if self._evaluator is None:
            datamodule = trainer.datamodule
            device = pl_module.device
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                loader = datamodule.calibration_dataloader(self.bn_batches, seed=self.calibration_seed)
                calibration = DeviceBatches(loader, None, device, self.preload)
                validation = DeviceBatches(datamodule.val_dataloader(), self.val_batches, device, self.preload)
            mode = pl_module.supernet.training
            self._evaluator = SupernetEvaluator(
                pl_module.supernet, calibration, validation, self._cost_model,
                memory_format=getattr(pl_module, "memory_format", "channels_last"),
            )  # fmt: skip
            pl_module.supernet.train(mode)
        return self._evaluator

    # ----------------------------------------------------------------- when
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started, self._segment_seconds = time.perf_counter(), 0.0
        passes = _passes(pl_module)
        if self.at_start and passes == 0 and not self.history:
            self.evaluate(trainer, pl_module, _step(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        passes = _passes(pl_module)
        last = self.history[-1]["paths"] if self.history else 0
        if passes == last and self.history:
            return
        crossed = self.every_n_paths is not None and passes // self.every_n_paths > last // self.every_n_paths
        epoch_end = (
            trainer.is_last_batch
            and self.every_n_epochs is not None
            and ((trainer.current_epoch + 1) % self.every_n_epochs == 0)
        )
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        final = (0 < trainer.max_steps <= trainer.global_step) or (
            trainer.is_last_batch and max_epochs is not None and trainer.current_epoch + 1 >= max_epochs
        )
        if crossed or epoch_end or final:
            self.evaluate(trainer, pl_module, _step(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Training ended another way (max_time, early stopping): the final weights are scored too.
        if not self.history or self.history[-1]["paths"] != _passes(pl_module):
            self.evaluate(trainer, pl_module, _step(trainer) - 1)  # the batch counter has moved past the last batch
        if trainer.is_global_zero and self.history:
            self._rank_zero_only(self._write_summary, trainer)

    # ----------------------------------------------------------------- what
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int = 0) -> dict[str, float]:
        """Scores the K architectures now, records the accuracies, and on rank 0 logs and writes the ranking
        statistics (``step``: the loggers' step); returns them (empty on the other ranks)."""
        start = time.perf_counter()
        evaluator = self._build_evaluator(trainer, pl_module)
        supernet = pl_module.supernet
        mode = supernet.training
        rank, world = trainer.global_rank, trainer.world_size
        # Spread over the ranks where each rank's forwards are its own (DDP, no SyncBatchNorm: its train-mode
        # forwards are collectives, which ranks scoring different paths would not all make); else all score all.
        shard = world > 1 and not _synced_bn(supernet)
        owned = range(rank, len(self.archs), world) if shard else range(len(self.archs))
        device = pl_module.device
        supernet.eval()  # dropout off; the evaluator puts BN in the modes calibration and validation need
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                measured = evaluator.evaluate_many([self.archs[i] for i in owned]) if len(owned) else []
        finally:
            supernet.train(mode)
        accuracy = torch.zeros(len(self.archs), dtype=torch.float64)
        for i, result in zip(owned, measured, strict=True):
            accuracy[i] = result["acc1"]
        if shard:  # each architecture scored on one rank: the sum is exact, and the same on every rank
            accuracy = trainer.strategy.reduce(accuracy.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        entry = {"paths": _passes(pl_module), "epoch": int(trainer.current_epoch), "step": int(trainer.global_step),
                 "acc1": [float(a) for a in accuracy.tolist()]}  # fmt: skip
        metrics: dict[str, float] = {}
        if trainer.is_global_zero:
            metrics = entry["stats"] = self.statistics(entry["acc1"])
        entry["seconds"] = round(time.perf_counter() - start, 3)
        self.history.append(entry)
        if trainer.is_global_zero:
            self._rank_zero_only(self._log, trainer, entry, step)
            self._rank_zero_only(self._write_files, trainer)
            log.info("ranking at %d passes: Kendall tau %.3f [%.3f, %.3f] over %d architectures (MAdds alone "
                     "%.3f), %.1f s", entry["paths"], metrics["kendall_tau"], metrics["kendall_tau_low"],
                     metrics["kendall_tau_high"], len(self.archs), metrics["madds_kendall_tau"],
                     entry["seconds"])  # fmt: skip
        seconds = time.perf_counter() - start  # the files and the plot included
        self.seconds += seconds
        self._segment_seconds += seconds
        return metrics

    @staticmethod
    def _rank_zero_only(fn: Any, *args: Any) -> None:
        """Runs what rank 0 alone does (logging, files): a failure there warns instead of ending rank 0 while the
        other ranks wait for it at the next collective."""
        try:
            fn(*args)
        except Exception as error:  # noqa: BLE001 - reported, and training goes on
            log.warning("ranking monitor: %s failed (%s: %s); training goes on", fn.__name__, type(error).__name__,
                        error)  # fmt: skip

    def statistics(self, oneshot: list[float]) -> dict[str, float]:
        """The ranking statistics of one-shot accuracies of the K architectures (in :attr:`archs` order)."""
        truth, madds = self._true, [float(m) for m in self._madds]
        if self.n_boot:
            tau, low, high = bootstrap_ci(kendall_tau, oneshot, truth, n_boot=self.n_boot, seed=self.seed)
        else:
            tau, low, high = kendall_tau(oneshot, truth), math.nan, math.nan
        return {
            "kendall_tau": tau,
            "kendall_tau_low": low,
            "kendall_tau_high": high,
            "spearman": spearman_rho(oneshot, truth),
            "partial_tau": partial_kendall_tau(oneshot, truth, madds),
            "top_k_precision": top_k_precision(oneshot, truth, self.top_k),
            "madds_kendall_tau": kendall_tau(madds, truth),
        }

    # ----------------------------------------------------------------- where it goes
    def _log(self, trainer: pl.Trainer, entry: dict[str, Any], step: int) -> None:
        series = {f"rank/{k}": float(v) for k, v in entry["stats"].items()}
        series["rank/seconds"] = float(entry["seconds"])
        series["rank/paths"] = float(entry["paths"])
        step = max(0, int(step))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):  # TensorBoard's x-axis is the step: make it the passes
                for key, value in series.items():
                    if key != "rank/paths":
                        logger.experiment.add_scalar(key, value, entry["paths"])
            elif isinstance(logger, WandbLogger):
                logger.experiment.log({**series, "trainer/global_step": step})
            else:  # CSV and others: the logging step, with rank/paths as a column
                logger.log_metrics(series, step)

    def _folder(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir) / "ranking"

    def _write_files(self, trainer: pl.Trainer) -> None:
        folder = self._folder(trainer)
        names = [format_arch(a) for a in self.archs]
        truth, madds = self._true, self._madds
        params = [self._cost_model.params(a) for a in self.archs]
        rows = io.StringIO()
        w = csv.writer(rows, lineterminator="\n")
        w.writerow(["evaluation", "paths", "epoch", "step", "arch", "madds", "params", "truth", "oneshot"])
        for n, entry in enumerate(self.history):
            for i, name in enumerate(names):
                w.writerow([n, entry["paths"], entry["epoch"], entry["step"], name, madds[i], params[i],
                            repr(truth[i]), repr(entry["acc1"][i])])  # fmt: skip
        write_text_atomic(folder / "archs.csv", rows.getvalue())
        table = io.StringIO()
        w = csv.writer(table, lineterminator="\n")
        w.writerow(["evaluation", "paths", "epoch", "step", "seconds", *METRICS])
        curve = []
        for n, entry in enumerate(self.history):
            stats = entry.get("stats") or self.statistics(entry["acc1"])
            curve.append((entry["paths"], stats))
            w.writerow([n, entry["paths"], entry["epoch"], entry["step"], entry["seconds"],
                        *(repr(float(stats[k])) for k in METRICS)])  # fmt: skip
        write_text_atomic(folder / "metrics.csv", table.getvalue())
        _plot(curve, folder / "tau.png", f"{self.truth.name}: {len(self.archs)} architectures")

    def _write_summary(self, trainer: pl.Trainer) -> None:
        fit_seconds = time.perf_counter() - self._fit_started
        last = self.history[-1].get("stats") or self.statistics(self.history[-1]["acc1"])
        write_json_atomic(self._folder(trainer) / "summary.json", {
            "ground_truth": self.truth.name, "num_archs": len(self.archs), "seed": self.seed,
            "evaluations": len(self.history), "paths": self.history[-1]["paths"],
            "seconds_per_evaluation": round(self.seconds / len(self.history), 3),
            "monitor_seconds": round(self.seconds, 3),
            "fit_seconds_this_segment": round(fit_seconds, 3),
            "monitor_share_this_segment": round(self._segment_seconds / fit_seconds, 4) if fit_seconds else None,
            **{f"final_{k}": v for k, v in last.items()},
        })  # fmt: skip

    # ----------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"archs": [format_arch(a) for a in self.archs], "history": copy.deepcopy(self.history),
                "seconds": self.seconds, "ground_truth": None if self.truth is None else self.truth.name}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = [tuple(int(c) for c in a.split("-")) for a in state.get("archs", [])]
        other_truth = self.truth is not None and state.get("ground_truth") not in (None, self.truth.name)
        if (self.archs and saved != self.archs) or other_truth:
            log.warning("the ranking monitor of the checkpoint scored other architectures (another ground truth, "
                        "num_archs or seed): its curve starts again")  # fmt: skip
            return
        self.history = copy.deepcopy(list(state.get("history", [])))
        self.seconds = float(state.get("seconds", 0.0))


def _step(trainer: pl.Trainer) -> int:
    """The loggers' step of the batch being finished: Lightning logs its metrics there (batches trained)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def _synced_bn(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())


def _passes(pl_module: pl.LightningModule) -> int:
    """Single-path passes trained so far: the updates of any one layer (every path trains each layer once)."""
    return int(pl_module.block_usage[0].sum())


def _plot(curve: list[tuple[int, dict[str, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fairnas.utils import write_atomic

    x = [p for p, _ in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    tau = [s["kendall_tau"] for _, s in curve]
    ax.plot(x, tau, marker="o", label="supernet (Kendall tau)")
    low, high = [s["kendall_tau_low"] for _, s in curve], [s["kendall_tau_high"] for _, s in curve]
    if not any(math.isnan(v) for v in low + high):
        ax.fill_between(x, low, high, alpha=0.2, label="95% bootstrap interval")
    ax.axhline(curve[0][1]["madds_kendall_tau"], color="grey", linestyle="--", label="MAdds alone")
    ax.set_xlabel("single-path passes")
    ax.set_ylabel("Kendall tau vs ground truth")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, lambda f: f.write(buffer.getvalue()))
