"""Comparing the jobs of a sweep: a table grouped by what differs, and plots.

Works on the folders Hydra writes: every directory below the given ones that holds
``.hydra/overrides.yaml`` and a train.py ``results.json`` is a job. Jobs are grouped by the
command-line overrides whose values differ between them, seeds left out, so the jobs of
``-m sampler=sf,ef seed=0,1,2`` form two groups of three; each metric is reported as mean ± std
over a group's jobs (sample std, n - 1).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Overrides that say which repetition a job is, not what it compares.
SEED_KEYS = ("seed", "dataset.seed", "dataset.split_seed", "sampler.seed", "system.val_seed", "system.calibration_seed")
# Overrides that only say where or how a job ran.
IGNORED_PREFIXES = ("hydra.", "paths.", "name", "group", "tags", "ckpt_path", "trainer.devices", "trainer.accelerator",
                    "logger", "trainer.enable_progress_bar")  # fmt: skip
# Metrics of results.json shown first, when present.
MAIN_METRICS = ("val/acc_mean", "rank/kendall_tau", "val/acc_min", "val/acc_max", "test/acc_mean", "train/loss",
                "fairness_spread", "train/paths", "global_step", "wall_time_s", "rank/partial_tau",
                "rank/madds_kendall_tau")  # fmt: skip
# The ranking monitor's final statistics (callbacks=ranking: <job>/ranking/metrics.csv) added to a job's results.
RANK_METRICS = ("kendall_tau", "kendall_tau_low", "kendall_tau_high", "spearman", "partial_tau", "top_k_precision",
                "madds_kendall_tau")  # fmt: skip


@dataclass
class Job:
    """One finished train.py job."""

    path: Path
    overrides: dict[str, str]
    results: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, val/acc_mean)
    ranking: list[dict[str, float]] = field(
        default_factory=list
    )  # the ranking monitor's rows (paths, kendall_tau, ...)

    @property
    def seed(self) -> Any:
        return self.results.get("seed", self.overrides.get("seed"))


def _override_items(lines: Iterable[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _curve(metrics_csv: Path, metric: str = "val/acc_mean") -> list[tuple[int, float]]:
    if not metrics_csv.is_file():
        return []
    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    return [(int(float(r["step"])), float(r[metric])) for r in rows if r.get(metric) not in (None, "")]


def _ranking(job_dir: Path) -> list[dict[str, float]]:
    """The ranking monitor's evaluations of a job (``ranking/metrics.csv``), oldest first; [] without a monitor."""
    path = job_dir / "ranking" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def _wandb_curve(job_dir: Path, metric: str = "val/acc_mean") -> list[tuple[int, float]]:
    """The curve from the job's offline W&B run, for jobs logged without a CSV logger."""
    from fairnas.utils.wandb_offline import read_offline_run

    runs = sorted((job_dir / "wandb").glob("*run-*"))
    if not runs:
        return []
    history = read_offline_run(runs[-1]).history
    return [(int(h["trainer/global_step"]), float(h[metric])) for h in history if metric in h
            and "trainer/global_step" in h]  # fmt: skip


def find_jobs(roots: Sequence[str | Path]) -> list[Job]:
    """Every train.py job below ``roots`` (a sweep directory, or job directories themselves)."""
    jobs, seen = [], set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a directory: give sweep or run folders (multirun/<date>/<time>)")
        for overrides in sorted(root.glob("**/.hydra/overrides.yaml")):
            job_dir = overrides.parent.parent
            results_path = job_dir / "results.json"
            if job_dir in seen or not results_path.is_file():
                continue
            results = json.loads(results_path.read_text())
            if "global_step" not in results:  # a search.py or study job, not a training run
                continue
            seen.add(job_dir)
            items = _override_items(yaml.safe_load(overrides.read_text()) or [])
            curve = _curve(job_dir / "csv" / "metrics.csv") or _wandb_curve(job_dir)
            ranking = _ranking(job_dir)
            if ranking:  # the final ranking statistics, reported like any other metric
                results.update({f"rank/{k}": ranking[-1][k] for k in RANK_METRICS if k in ranking[-1]})
            jobs.append(Job(job_dir, items, results, curve, ranking))
    return jobs


def differing_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose values differ between jobs (seeds and where-it-ran keys left out)."""
    keys = sorted({k for j in jobs for k in j.overrides})
    keep = []
    for key in keys:
        if key in SEED_KEYS or key.startswith(IGNORED_PREFIXES):
            continue
        if len({j.overrides.get(key, "(default)") for j in jobs}) > 1:
            keep.append(key)
    return keep


def _fmt(values: list[float]) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {statistics.stdev(values):.2g}"


@dataclass
class SweepReport:
    """Jobs grouped by what differs between them, with each metric's values per group."""

    keys: list[str]
    groups: dict[tuple[str, ...], list[Job]]
    metrics: list[str]

    @classmethod
    def build(cls, jobs: Sequence[Job]) -> SweepReport:
        if not jobs:
            raise ValueError("no finished train.py jobs found (folders with .hydra/overrides.yaml and results.json)")
        keys = differing_keys(jobs)
        groups: dict[tuple[str, ...], list[Job]] = {}
        for job in jobs:
            groups.setdefault(tuple(job.overrides.get(k, "(default)") for k in keys), []).append(job)
        numeric = {k for j in jobs for k, v in j.results.items() if _is_number(v)} - {"seed", "world_size"}
        metrics = [m for m in MAIN_METRICS if m in numeric] + sorted(numeric - set(MAIN_METRICS))
        return cls(keys, groups, metrics)

    def values(self, group: tuple[str, ...], metric: str) -> list[float]:
        return [float(j.results[metric]) for j in self.groups[group] if _is_number(j.results.get(metric))]

    def label(self, group: tuple[str, ...]) -> str:
        return ", ".join(f"{k}={v}" for k, v in zip(self.keys, group)) or "all jobs"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*self.keys, "jobs", "seeds"] + [f"{m} {s}" for m in self.metrics for s in ("mean", "std")])
        for group, jobs in self.groups.items():
            row: list[Any] = [*group, len(jobs), " ".join(str(j.seed) for j in jobs)]
            for metric in self.metrics:
                vals = self.values(group, metric)
                row += [statistics.fmean(vals) if vals else "", statistics.stdev(vals) if len(vals) > 1 else ""]
            writer.writerow(row)
        return out.getvalue()

    def to_markdown(self, shown: Sequence[str] | None = None) -> str:
        shown = [m for m in (shown or self.metrics[:7]) if m in self.metrics]
        head = [*(self.keys or ["group"]), "jobs", *shown]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for group, jobs in self.groups.items():
            cells = [*(group or ("all jobs",)), str(len(jobs)), *(_fmt(self.values(group, m)) for m in shown)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def ranking_markdown(self) -> str:
        """Final Kendall tau per group (mean ± std over its jobs) and each job's tau with its bootstrap interval."""
        lines = ["| " + " | ".join([*(self.keys or ["group"]), "jobs", "final Kendall tau", "each job [95% interval]",
                                    "partial tau given MAdds", "MAdds alone", "passes"]) + " |"]  # fmt: skip
        lines.append("|" + "---|" * (len(self.keys or ["group"]) + 6))
        for group, jobs in self.groups.items():
            ranked = [j for j in jobs if j.ranking]
            if not ranked:
                continue
            each = ", ".join(_with_interval(j.ranking[-1]) for j in ranked)
            cells = [*(group or ("all jobs",)), str(len(ranked)), _fmt(self.values(group, "rank/kendall_tau")), each,
                     _fmt(self.values(group, "rank/partial_tau")), _fmt(self.values(group, "rank/madds_kendall_tau")),
                     " ".join(str(int(j.ranking[-1]["paths"])) for j in ranked)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot_final(self, path: Path, metric: str = "val/acc_mean") -> Any:
        """One column per group: every job's final ``metric`` as a dot, the mean ± std as a bar."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = list(self.groups)
        fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 1.3 * len(labels)), 4))
        for x, group in enumerate(labels):
            vals = self.values(group, metric)
            if not vals:
                continue
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            ax.errorbar([x], [statistics.fmean(vals)], yerr=[std], fmt="_", ms=24, capsize=6, c="k")
            ax.scatter([x] * len(vals), vals, s=22, zorder=3)
        ax.set_xticks(range(len(labels)), ["\n".join(f"{v}" for v in g) or "all" for g in labels], fontsize=8)
        ax.set_xlabel(", ".join(self.keys) or "jobs")
        ax.set_ylabel(f"final {metric}")
        ax.set_title("each job (dots); mean ± std over its group (bars)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return fig

    def plot_curves(self, path: Path) -> Any:
        """Validation accuracy against batches trained, one line per job, one colour per group."""
        fig, ax, colours = _curve_axes()
        for k, (group, jobs) in enumerate(self.groups.items()):
            for n, job in enumerate(jobs):
                if job.curve:
                    steps, accs = zip(*job.curve)
                    label = self.label(group) if n == 0 else None
                    ax.plot(steps, accs, "o-", ms=3, c=colours[k % len(colours)], alpha=0.8, label=label)
        xlabel = "batches trained (Lightning step; m single-path passes each for sf, ef and biased)"
        return _finish_curves(fig, ax, path, xlabel, "val/acc_mean")

    def plot_ranking(self, path: Path) -> Any:
        """The ranking monitor's Kendall tau against single-path passes: one line per job, one colour per
        group, the group's mean over its jobs in bold, and the MAdds proxy's tau dashed."""
        fig, ax, colours = _curve_axes()
        proxy = set()
        for k, (group, jobs) in enumerate(self.groups.items()):
            colour = colours[k % len(colours)]
            curves = [[(r["paths"], r["kendall_tau"]) for r in j.ranking] for j in jobs if j.ranking]
            for curve in curves:
                ax.plot(*zip(*curve), "-", lw=0.8, c=colour, alpha=0.35)
            proxy |= {round(j.ranking[-1]["madds_kendall_tau"], 6) for j in jobs if j.ranking}
            common = [c for c in curves if [p for p, _ in c] == [p for p, _ in curves[0]]] if curves else []
            if common:
                mean = [statistics.fmean(v) for v in zip(*([t for _, t in c] for c in common))]
                ax.plot([p for p, _ in common[0]], mean, "o-", ms=3, lw=2, c=colour,
                        label=f"{self.label(group)} (mean of {len(common)})")  # fmt: skip
        for value in sorted(proxy):
            ax.axhline(value, color="grey", ls="--", lw=1, label="MAdds alone" if value == min(proxy) else None)
        return _finish_curves(fig, ax, path, "single-path passes trained", "Kendall tau vs ground truth")


def _curve_axes() -> tuple[Any, Any, list[str]]:
    """A figure for curves of every job, and the colour cycle (one colour per group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    return fig, ax, plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _finish_curves(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str) -> Any:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def _with_interval(row: dict[str, float]) -> str:
    low, high = row.get("kendall_tau_low", math.nan), row.get("kendall_tau_high", math.nan)
    return f"{row['kendall_tau']:.3f} [{low:.3f}, {high:.3f}]"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def write_report(roots: Sequence[str | Path], out_dir: str | Path | None = None) -> tuple[SweepReport, dict[str, Path]]:
    """Writes report.md, report.csv, jobs.csv, report_final.png and report_curves.png into
    ``out_dir`` (default: the first root) and returns the report and the files."""
    from fairnas.utils import write_text_atomic

    jobs = find_jobs(roots)
    report = SweepReport.build(jobs)
    out = Path(out_dir) if out_dir is not None else Path(roots[0])
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("report.md", "report.csv", "jobs.csv", "report_final.png",
                                            "report_curves.png")}  # fmt: skip
    missing = [j.path.name for j in jobs if not j.curve]
    md = [f"# Sweep report: {len(jobs)} jobs in {len(report.groups)} groups", ""]
    md.append(f"Grouped by: {', '.join(report.keys) or '(nothing differs)'}; mean ± std over each group's jobs.")
    md += ["", report.to_markdown(), "![final metric](report_final.png)", "", "![curves](report_curves.png)", ""]
    if missing:
        md.append(f"No CSV or W&B log for curves in: {', '.join(missing)}.")
    ranked = [j for j in jobs if j.ranking]
    if ranked:
        files["report_ranking.png"] = out / "report_ranking.png"
        md += ["## Ranking during training (callbacks=ranking)", "", report.ranking_markdown(), "",
               "![Kendall tau against passes](report_ranking.png)", ""]  # fmt: skip
    write_text_atomic(files["report.md"], "\n".join(md) + "\n")
    write_text_atomic(files["report.csv"], report.to_csv())
    write_text_atomic(files["jobs.csv"], _jobs_csv(jobs, report))
    import matplotlib.pyplot as plt

    plt.close(report.plot_final(files["report_final.png"]))
    plt.close(report.plot_curves(files["report_curves.png"]))
    if ranked:
        plt.close(report.plot_ranking(files["report_ranking.png"]))
    return report, files


def _jobs_csv(jobs: Sequence[Job], report: SweepReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["job", *report.keys, "seed", *report.metrics])
    for job in jobs:
        row = [job.path.name, *(job.overrides.get(k, "(default)") for k in report.keys), job.seed]
        writer.writerow(row + [job.results.get(m, "") for m in report.metrics])
    return out.getvalue()
