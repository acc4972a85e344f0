"""Fairness telemetry: how often every (layer, choice) block has been trained."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from fairnas.utils import write_text_atomic


def usage_csv(counts: np.ndarray) -> str:
    """``layer,choice,count`` rows of a (L, m) count matrix."""
    out = io.StringIO()
    out.write("layer,choice,count\n")
    for layer, row in enumerate(counts):
        for choice, count in enumerate(row):
            out.write(f"{layer},{choice},{int(count)}\n")
    return out.getvalue()


def usage_heatmap(counts: np.ndarray, title: str = "block usage"):
    """A matplotlib figure: layers down, choices across, update counts as colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, choices = counts.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * choices, 1.0 + 0.3 * layers))
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    ax.set_xlabel("choice")
    ax.set_ylabel("searchable layer")
    ax.set_xticks(range(choices))
    ax.set_yticks(range(layers))
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="updates")
    fig.tight_layout()
    return fig


def logging_step(trainer: pl.Trainer) -> int:
    """The x-axis value of the metrics Lightning logs at the end of an epoch: the index of the last
    batch trained (batches, not optimizer steps: ef makes m optimizer steps per batch). Media logged
    by hand at epoch end use it too, so every metric of a run shares one axis (W&B's
    ``trainer/global_step``), as Lightning's epoch-end and validation metrics do."""
    return max(0, int(trainer.fit_loop.epoch_loop._batches_that_stepped) - 1)


class BlockUsageLogger(Callback):
    """Logs the cumulative update count of every (layer, choice) of a supernet system.

    Every ``log_every_n_steps`` steps: ``usage/spread`` (largest per-layer max - min count; 0 under
    strict fairness, always), ``usage/min`` and ``usage/max``. At the end of every training epoch:
    a heatmap and per-layer histograms to TensorBoard and W&B, the full table to CSV loggers, and
    ``block_usage.csv`` (layer, choice, count) in the run directory. Reads the system's
    ``block_usage`` buffer; changes nothing. Systems without one (stand-alone runs) are ignored.

    Args:
        output_dir: Where ``block_usage.csv`` goes (default: the trainer's ``default_root_dir``).
        log_every_n_steps: Interval of the scalar logs.
    """

    def __init__(self, output_dir: str | None = None, log_every_n_steps: int = 50) -> None:
        self.output_dir = output_dir
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self._logged_at = -1

    @staticmethod
    def _counts(pl_module: pl.LightningModule) -> np.ndarray | None:
        usage = getattr(pl_module, "block_usage", None)
        return None if usage is None else usage.detach().cpu().numpy()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs) -> None:
        counts = self._counts(pl_module)
        step, n = trainer.global_step, self.log_every_n_steps
        # A batch can make several optimizer steps (ef), so look for a crossed multiple of n.
        crossed = step // n > self._logged_at // n
        last = trainer.is_last_batch or 0 < trainer.max_steps <= step
        if counts is None or not (crossed or last):
            return
        self._logged_at = step
        spread = (counts.max(1) - counts.min(1)).max()
        pl_module.log_dict(
            {"usage/spread": float(spread), "usage/min": float(counts.min()), "usage/max": float(counts.max())},
            on_step=True,
            on_epoch=False,
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counts = self._counts(pl_module)
        if counts is not None:
            self._log_media(trainer, counts)
            self._write_csv(trainer, counts)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counts = self._counts(pl_module)
        if counts is not None:
            self._write_csv(trainer, counts)

    def _write_csv(self, trainer: pl.Trainer, counts: np.ndarray) -> None:
        if trainer.is_global_zero:
            write_text_atomic(Path(self.output_dir or trainer.default_root_dir) / "block_usage.csv", usage_csv(counts))

    def _log_media(self, trainer: pl.Trainer, counts: np.ndarray) -> None:
        if not trainer.is_global_zero:
            return
        step = logging_step(trainer)
        edges = np.arange(counts.shape[1] + 1) - 0.5
        figure = None
        for logger in trainer.loggers:
            if isinstance(logger, (TensorBoardLogger, WandbLogger)) and figure is None:
                figure = usage_heatmap(counts, f"block usage, optimizer step {trainer.global_step}")
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment
                writer.add_figure("usage/heatmap", figure, step, close=False)
                choices = np.arange(counts.shape[1])
                for layer, row in enumerate(counts):
                    n = int(row.sum())
                    writer.add_histogram_raw(
                        f"usage/layer_{layer}",
                        min=0,
                        max=int(choices[-1]),
                        num=n,
                        sum=float((choices * row).sum()),
                        sum_squares=float((choices**2 * row).sum()),
                        bucket_limits=(edges[1:]).tolist(),
                        bucket_counts=row.tolist(),
                        global_step=step,
                    )
            elif isinstance(logger, WandbLogger):
                import wandb

                data = {"usage/heatmap": wandb.Image(figure), "trainer/global_step": step}
                for layer, row in enumerate(counts):
                    data[f"usage/layer_{layer}"] = wandb.Histogram(np_histogram=(row.tolist(), edges.tolist()))
                logger.experiment.log(data)
            elif isinstance(logger, CSVLogger):
                logger.log_metrics(
                    {f"usage/l{layer}_c{c}": int(v) for layer, row in enumerate(counts) for c, v in enumerate(row)},
                    step,
                )
        if figure is not None:
            import matplotlib.pyplot as plt

            plt.close(figure)
