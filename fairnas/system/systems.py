"""Lightning systems: the fair supernet step, and stand-alone training of one architecture.

Both use manual optimization, so that one training step can accumulate the gradients of several
single-path models before ONE optimizer step, clip once, and step the scheduler once per optimizer
step (Lightning never steps schedulers in manual mode).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics.classification import MulticlassAccuracy

from fairnas.callbacks.step_checks import SamePathsCheck, StepSeed
from fairnas.data.base import check_seed
from fairnas.errors import ConfigError
from fairnas.models import ChildNet, Supernet, layout
from fairnas.models.path_tree import PathTree
from fairnas.run.resume import align_loop_state
from fairnas.samplers import PathSampler
from fairnas.system.nonfinite import NonFiniteGuard
from fairnas.system.optim import param_groups, schedule_difference

log = logging.getLogger("fairnas")

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


STEP_MODES = ("per_path", "fused")


class _ClassifierSystem(pl.LightningModule):
    """Shared by both systems: optimizer and schedule, one manual update, clipping, metrics.

    Its keyword arguments are the settings every system takes (the systems pass them on unchanged):

    Args:
        optimizer: Partial optimizer (called with parameter groups).
        scheduler: Partial schedule (called with the optimizer and ``total_steps``).
        label_smoothing: Label smoothing of the cross-entropy.
        grad_clip: Max gradient norm (clipped once per optimizer step), or None.
        nonfinite: What a NaN/inf gradient does: ``stop`` (save ``checkpoints/last_good.ckpt`` and
            end with an error) or ``skip`` (drop that update, count it, warn).
        seed: Seeds torch's global generator (dropout) at every step, from (seed, step).
        memory_format: Layout of weights and input batches: ``channels_last`` (default, 1.5x to
            2.1x faster steps on CPU, see :mod:`fairnas.models.layout`) or ``contiguous`` (NCHW).
        weight_decay_bn_bias: Apply weight decay to BN parameters and biases too.
        metadata: The run record (:meth:`fairnas.run.record.RunRecord.to_dict`), stored in checkpoints under
            ``"fairnas"``.
    """

    def __init__(
        self,
        *,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        grad_clip: float | None = None,
        weight_decay_bn_bias: bool = False,
        metadata: dict[str, Any] | None = None,
        nonfinite: str = "stop",
        seed: int = 0,
        memory_format: str = "channels_last",
    ) -> None:
        super().__init__()
        self.seed = int(seed)
        layout.memory_format(memory_format)  # a bad name fails here, before any training
        self.memory_format = memory_format
        if grad_clip is not None and grad_clip < 0:
            raise ConfigError(f"system.grad_clip must be a max gradient norm > 0 (0 or null: off), got {grad_clip}")
        self.nonfinite_guard = NonFiniteGuard(nonfinite)
        # Optimizer steps skipped because of NaN/inf gradients (checkpointed with the weights).
        self.register_buffer("nonfinite_steps", torch.zeros((), dtype=torch.long))
        self.automatic_optimization = False
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.grad_clip = grad_clip
        self.weight_decay_bn_bias = weight_decay_bn_bias
        # The run record (plain data) that lets later stages (search, analysis, resume) rebuild and check the run.
        self.metadata = dict(metadata or {})
        self.updates_per_batch = 1
        self.last_validated_step = -1
        self.schedule_horizon: int | None = None  # optimizer steps the LR schedule spans (checkpointed)
        self._resumed: tuple[int, int | None] | None = None  # (step, schedule horizon) of the checkpoint resumed

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(param_groups(self, self.weight_decay_bn_bias))
        if self.scheduler_factory is None:
            return optimizer
        self.schedule_horizon = self.total_updates()
        if self._resumed is not None:
            self._check_schedule_horizon(*self._resumed)
        scheduler = self.scheduler_factory(optimizer, total_steps=self.schedule_horizon)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _check_schedule_horizon(self, step: int, saved: int | None) -> None:
        """Warns when a resumed run plans its LR schedule over another number of steps than the run it continues
        and that changes the learning rates of the steps already trained (cosine does, a constant schedule not)."""
        if saved is None or saved == self.schedule_horizon or not step or not self.trainer.is_global_zero:
            return
        factories = self.optimizer_factory, self.scheduler_factory
        changed = schedule_difference(*factories, saved, self.schedule_horizon, step)
        if changed is not None:
            at, old, new = changed
            log.warning(
                "the LR schedule now spans %d optimizer steps, the run resumed at step %d planned %d: the steps "
                "already trained followed the old plan (step %d: lr %.6g, the new plan %.6g) and the rest follows the "
                "new one, so this run differs from one trained for %d steps from the start. For an exact extension "
                "use a schedule that does not depend on the run length (scheduler.min_lr_ratio=1.0, no warm-up).",
                self.schedule_horizon, step, saved, at, old, new, self.schedule_horizon,
            )  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Before Lightning restores its loops: every kind of checkpoint continues where it really stopped.
        epoch, batches = align_loop_state(checkpoint)
        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "resume_at"):  # fairnas's datamodules skip the batches already trained
            datamodule.resume_at(epoch, batches)
        step = int(checkpoint.get("global_step", 0))
        self._resumed = (step, (checkpoint.get("fairnas_schedule") or {}).get("horizon"))
        where = f"epoch {epoch} after batch {batches}" if batches else f"the start of epoch {epoch}"
        log.info("resuming at step %d: %s", step, where)

    def total_updates(self) -> int:
        """Optimizer steps of the whole run (the horizon of the schedule)."""
        batches = self.trainer.estimated_stepping_batches
        if not np.isfinite(batches):
            raise ConfigError("the LR schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
        total = int(batches) * self.updates_per_batch
        if self.trainer.max_steps is not None and self.trainer.max_steps > 0:
            total = min(total, self.trainer.max_steps)
        return total

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Runs inside optimizer.step(), after fp16 mixed precision has unscaled the gradients. On one
        # device or DDP without a grad scaler, _finish_update has already clipped, with the norm it
        # computed for its NaN check; other strategies (FSDP, DeepSpeed) clip their own way here.
        if self.grad_clip and not self._shared_norm():
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def _scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def _shared_norm(self) -> bool:
        """Whether _finish_update clips with its NaN check's norm: every rank holds the whole
        gradient (one device or DDP, not sharded) and no grad scaler has to unscale it first."""
        strategy = self.trainer.strategy
        whole = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy))
        return whole and not isinstance(strategy, DeepSpeedStrategy) and self._scaler() is None

    def _finish_update(self, optimizer: Any) -> bool:
        """Clips the gradients, steps the optimizer once and the scheduler once.

        Returns False when the update was skipped because a gradient is NaN or infinite. The check
        runs on the gradients after the last backward, which DDP has already all-reduced, so every
        rank takes the same decision without extra communication; the gradient norm it computes is
        the one clipping uses (computed once per update). Under fp16 mixed precision the grad scaler
        skips such steps itself, and clipping happens after unscaling (on_before_optimizer_step).
        The parameters are taken in the optimizer's order, as Lightning's own clipping takes them, so
        the norm is the same to the last bit. Callbacks' ``on_before_optimizer_step`` therefore see
        clipped gradients (except under a grad scaler).
        """
        if not self.nonfinite_guard.bn_finite(self):
            # Finite gradients can come with overflowing activations: BN normalises them away, but its
            # running variance becomes inf and every later evaluation with these statistics is garbage.
            self.nonfinite_guard.reject(self, optimizer, "a BatchNorm running statistic")
            return False
        if self._scaler() is None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if params:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params])
                if not torch.isfinite(norm):
                    self.nonfinite_guard.reject(self, optimizer)
                    return False
                if self.grad_clip and self._shared_norm():
                    torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self.log("train/lr", optimizer.param_groups[0]["lr"])
        return True

    def _inputs(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        # Follows the module's dtype, so trainer.precision=64 runs fully in float64.
        return layout.as_layout(x.to(self.dtype), self.memory_format), y

    def on_validation_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.last_validated_step = self.global_step

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fairnas"] = self.metadata
        checkpoint["fairnas_schedule"] = {"horizon": self.schedule_horizon}

    def configure_callbacks(self) -> list[pl.Callback]:
        """The callbacks around every training step, attached by the system, not by a config that could
        leave them out (exact resume needs the step seed). Lightning asks again on every ``fit``,
        ``validate`` or ``test`` of the same trainer, where those of the first call are still attached."""
        attached = {type(c) for c in self.trainer.callbacks} if self._trainer is not None else set()
        return [c for c in self._step_callbacks() if type(c) not in attached]

    def _step_callbacks(self) -> list[pl.Callback]:
        return [StepSeed(self.seed)]


class SupernetSystem(_ClassifierSystem):
    """Trains a supernet with the paths of a sampler (strict fairness by default).

    One training step takes one batch and the sampler's update groups for the current step; for
    each group: zero the gradients, forward + ``manual_backward`` each path (no update in between,
    so later paths do not see weights moved by earlier ones), clip, ONE optimizer step, one
    scheduler step. Under DDP, the backward passes before the last of a group run without gradient
    synchronisation, so a group costs exactly one all-reduce; every parameter used by any path of
    the group is reduced on that last pass (needs ``find_unused_parameters=True``, which
    :func:`fairnas.system.ddp.resolve_strategy` sets).

    Args:
        supernet: The supernet.
        sampler: Which paths each step trains.
        grad_reduction: ``sum`` (default) or ``mean`` of the gradients of a group's paths.
        split_batch: Give each path of a group its own chunk of the batch instead of the whole batch.
        step_mode: ``per_path`` (default): forward + backward one path at a time, so only one path's
            activations are alive (the memory of one child network). ``fused``: forward all paths
            of a group, then ONE backward of their summed losses: the same gradients, about m times
            the activation memory, one backward call. Measured no faster on CPU, single-process
            or DDP (benchmarks/README.md).
        val_archs: Number K of fixed architectures whose accuracy validation reports.
        val_seed: Seed of those architectures.
        calibration_seed: Seed of the calibration batches (None: ``val_seed``, as before the two were
            separate settings).
        val_bn_batches: Before validating, re-estimate each architecture's BN statistics on this
            many fixed training batches (the datamodule's ``calibration_dataloader``); the
            supernet's own statistics are restored after. 0 evaluates with the supernet's
            running statistics, which mix all paths and misjudge single ones.
        path_check_every: Under DDP, check every this many steps that all ranks drew the same
            paths (0 disables); the system attaches this :class:`~fairnas.callbacks.SamePathsCheck`.
        **settings: The recipe and run settings every system takes (:class:`_ClassifierSystem`).
    """

    def __init__(
        self,
        supernet: Supernet,
        sampler: PathSampler,
        *,
        grad_reduction: str = "sum",
        split_batch: bool = False,
        step_mode: str = "per_path",
        val_archs: int = 8,
        val_seed: int = 0,
        calibration_seed: int | None = None,
        val_bn_batches: int = 10,
        path_check_every: int = 1,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        if grad_reduction not in ("sum", "mean"):
            raise ConfigError(f"grad_reduction must be 'sum' or 'mean', got {grad_reduction!r}")
        if step_mode not in STEP_MODES:
            raise ConfigError(f"system.step_mode must be one of {STEP_MODES}, got {step_mode!r}")
        self.step_mode = step_mode
        if (sampler.num_layers, sampler.num_choices) != (supernet.space.num_layers, supernet.space.num_choices):
            raise ConfigError(
                f"the sampler draws {sampler.num_layers} layers x {sampler.num_choices} choices but the space "
                f"{supernet.space.name!r} has {supernet.space.num_layers} x {supernet.space.num_choices}"
            )
        # logger=False: train.py sends every logger the whole run config instead (fairnas.tracking).
        self.save_hyperparameters(ignore=["supernet", "sampler", "optimizer", "scheduler", "metadata"], logger=False)
        self.supernet = layout.to_layout(supernet, self.memory_format)
        self.sampler = sampler
        self.grad_reduction = grad_reduction
        self.split_batch = split_batch
        self.path_check_every = path_check_every
        self.val_seed = val_seed
        self.calibration_seed = check_seed(val_seed if calibration_seed is None else calibration_seed,
                                           "system.calibration_seed")  # fmt: skip
        self.val_bn_batches = val_bn_batches
        self._val_tree: PathTree | None = None  # the validation paths, recalibrated, during a validation epoch
        self.updates_per_batch = sampler.updates_per_step
        space = supernet.space
        rng = np.random.default_rng(check_seed(val_seed, "system.val_seed"))
        if val_archs < 0:
            raise ConfigError(f"system.val_archs must be 0 or more, got {val_archs}")
        self.eval_archs: list[tuple[int, ...]] = [
            tuple(int(c) for c in row) for row in rng.integers(0, space.num_choices, (val_archs, space.num_layers))
        ]
        self.val_acc = nn.ModuleList(MulticlassAccuracy(supernet.num_classes, average="micro") for _ in self.eval_archs)
        # Cumulative gradient contributions of every (layer, choice): a buffer, so it is
        # checkpointed and restored with the weights.
        self.register_buffer("block_usage", torch.zeros(space.num_layers, space.num_choices, dtype=torch.long))

    def setup(self, stage: str) -> None:
        if stage != "fit" or not self.split_batch:
            return
        batch_size = getattr(self.trainer.datamodule, "batch_size", None)
        group = max(len(g) for g in self.sampler.sample(self.global_step))
        if batch_size is not None and batch_size < group:  # checked once, before any step
            raise ConfigError(
                f"system.split_batch gives each of the {group} paths of an update its own chunk of the batch, but "
                f"dataset.batch_size={batch_size}: raise dataset.batch_size to {group} or more, or drop split_batch"
            )

    def forward(self, x: Tensor, arch: Sequence[int]) -> Tensor:
        return self.supernet(x, arch)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = self._inputs(batch)
        optimizer = self.optimizers()
        step = self.global_step
        groups = self.sampler.sample(step)
        losses, correct = [], []
        max_steps = self.trainer.max_steps
        for group in groups:
            if 0 <= max_steps <= self.global_step:
                break  # several updates per batch (ef): stop exactly at max_steps, not after the batch
            optimizer.zero_grad(set_to_none=True)
            self.nonfinite_guard.before_update(self)
            xs = x.tensor_split(len(group)) if self.split_batch else [x] * len(group)
            ys = y.tensor_split(len(group)) if self.split_batch else [y] * len(group)
            scale = 1.0 / len(group) if self.grad_reduction == "mean" else 1.0
            fused: list[Tensor] = []
            for k, (arch, xk, yk) in enumerate(zip(group, xs, ys, strict=True)):
                with self._sync_if(k == len(group) - 1 or self.step_mode == "fused"):
                    logits = self.supernet(xk, arch)
                    loss = self.loss(logits, yk)
                    if self.step_mode == "fused":
                        fused.append(loss * scale)  # kept with its graph: one backward below
                    else:
                        self.manual_backward(loss * scale)  # frees this path's activations now
                losses.append(loss.detach())
                correct.append((logits.detach().argmax(1) == yk).float().mean())
            if fused:
                self.manual_backward(torch.stack(fused).sum())
            if self._finish_update(optimizer):
                for arch in group:
                    self._count_usage(arch)
        self.log("train/loss", torch.stack(losses).mean(), prog_bar=True)
        self.log("train/acc", torch.stack(correct).mean())
        # Single-path passes trained so far (forward + backward of one path each): the x-axis on
        # which samplers compare at equal compute (sf makes 1 optimizer step per m paths, ef m).
        self.log("train/paths", self.block_usage[0].sum().float())
        self.log("train/optimizer_steps", float(self.global_step))

    def _count_usage(self, arch: Sequence[int]) -> None:
        layers = torch.arange(len(arch), device=self.block_usage.device)
        self.block_usage[layers, torch.as_tensor(arch, device=self.block_usage.device)] += 1

    @contextlib.contextmanager
    def _sync_if(self, sync: bool) -> Iterator[None]:
        """Skips DDP's gradient all-reduce on every backward of a group but the last."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        if sync or block is None:
            yield
        else:
            with block():
                yield

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._calibrate_val_archs()

    def on_test_epoch_start(self) -> None:
        self._calibrate_val_archs()

    def on_validation_epoch_end(self) -> None:
        self._val_tree = None
        self._log_accuracies("val")

    def on_test_epoch_end(self) -> None:
        self._val_tree = None
        self._log_accuracies("test")

    def _calibration_loader(self) -> Iterable | None:
        """Training batches for BN recalibration: the datamodule's fixed calibration subset if it has one."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "calibration_dataloader"):
            return datamodule.calibration_dataloader(self.val_bn_batches, seed=self.calibration_seed)
        # Not the trainer's training loader: iterating it here would consume its shuffle RNG.
        return None

    def _calibration_batches(self, loader: Iterable) -> Iterator[Tensor]:
        for i, batch in enumerate(loader):
            if i == self.val_bn_batches:
                break
            yield layout.as_layout(batch[0].to(self.device, self.dtype), self.memory_format)

    def _calibrate_val_archs(self) -> None:
        """The K validation architectures as one :class:`~fairnas.models.path_tree.PathTree`, each path's BN
        statistics re-estimated on the same calibration batches: the search evaluator's own code path."""
        loader = self._calibration_loader() if self.val_bn_batches else None
        if loader is None and self.val_bn_batches:
            rank_zero_warn(
                "the datamodule has no calibration_dataloader(num_batches, seed): validating with the "
                "supernet's own BN statistics (set system.val_bn_batches=0 to silence this)"
            )
        self._val_tree = PathTree(self.supernet, self.eval_archs, own_stats=loader is None)
        if loader is not None:
            self._val_tree.calibrate(self._calibration_batches(loader))

    def _evaluate(self, batch: Sequence[Tensor], stage: str) -> None:
        """Accuracy of the K fixed architectures with the supernet's weights."""
        x, y = self._inputs(batch)
        if self._val_tree is None:  # validation_step outside a validation epoch (e.g. called by hand)
            self._calibrate_val_archs()
        losses = []
        for logits, metric in zip(self._val_tree.logits(x), self.val_acc, strict=True):
            losses.append(F.cross_entropy(logits, y))
            metric.update(logits, y)
        if losses:
            self.log(f"{stage}/loss_mean", torch.stack(losses).mean(), sync_dist=True)

    def _log_accuracies(self, stage: str) -> None:
        if not self.eval_archs:
            return
        accs = torch.stack([m.compute() for m in self.val_acc])  # synchronised across ranks
        for m in self.val_acc:
            m.reset()
        # Already synchronised by torchmetrics; sync_dist only states that every rank logs the same value.
        self.log_dict(
            {f"{stage}/acc_mean": accs.mean(), f"{stage}/acc_min": accs.min(), f"{stage}/acc_max": accs.max()},
            sync_dist=True,
        )

    def _step_callbacks(self) -> list[pl.Callback]:
        return [*super()._step_callbacks(), SamePathsCheck(self.path_check_every)]

    @property
    def fairness_spread(self) -> int:
        """Largest (max - min) update count over layers: 0 means every block was trained equally."""
        usage = self.block_usage
        return int((usage.max(1).values - usage.min(1).values).max())


class StandaloneSystem(_ClassifierSystem):
    """Trains one architecture from scratch as a plain network (the ground truth of ranking studies).

    Args:
        net: The stand-alone network (see :func:`fairnas.models.build_child`).
        **settings: The recipe and run settings every system takes (:class:`_ClassifierSystem`).
    """

    def __init__(self, net: ChildNet, **settings: Any) -> None:
        super().__init__(**settings)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "metadata"], logger=False)
        self.net = layout.to_layout(net, self.memory_format)
        num_classes = net.head.classifier.out_features
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = self._inputs(batch)
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.nonfinite_guard.before_update(self)
        logits = self.net(x)
        loss = self.loss(logits, y)
        self.manual_backward(loss)
        self._finish_update(optimizer)
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/acc", (logits.detach().argmax(1) == y).float().mean())

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def _evaluate(self, batch: Sequence[Tensor], stage: str, metric: MulticlassAccuracy) -> None:
        x, y = self._inputs(batch)
        logits = self.net(x)
        metric.update(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log(f"{stage}/acc", metric)
