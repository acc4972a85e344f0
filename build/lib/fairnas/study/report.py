"""The ranking study's report: tables (Markdown, CSV), plots and results.json."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fairnas.analysis import kendall_tau, markdown_table, paired_bootstrap_diff, ranking_report, write_csv
from fairnas.analysis.similarity import plot_similarity, similarity_summary
from fairnas.utils import write_json_atomic, write_text_atomic

__all__ = ["write_report"]


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_scatter(truth: Any, oneshot: Mapping[str, Sequence[float]], path: Path) -> Path:
    """One-shot accuracy against stand-alone accuracy (mean over seeds, bars: min-max), one colour per supernet."""
    figure = _figure((6.5, 4.8))
    ax = figure.subplots()
    per_seed = truth[truth.seed_columns] * 100
    mean = per_seed.mean(axis=1)
    for name, accs in oneshot.items():
        y = 100 * np.asarray(accs)
        tau = kendall_tau(y, mean)
        ax.errorbar(mean, y, xerr=[mean - per_seed.min(axis=1), per_seed.max(axis=1) - mean], fmt="o", ms=4,
                    elinewidth=0.6, alpha=0.85, label=f"{name} (tau {tau:+.2f})")  # fmt: skip
    ax.set_xlabel("stand-alone top-1 accuracy (%), mean over seeds")
    ax.set_ylabel("one-shot top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"one-shot vs stand-alone, {len(mean)} architectures")
    figure.savefig(path, dpi=120)
    return path


def plot_histograms(histograms: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Overlaid histograms of the one-shot accuracies of each supernet's random sample (paper fig. 1, bottom)."""
    figure = _figure((6.5, 4.0))
    ax = figure.subplots()
    values = [100 * np.asarray(v) for v in histograms.values()]
    low, high = min(v.min() for v in values), max(v.max() for v in values)
    bins = np.linspace(low, high, 31)
    for (name, _), v in zip(histograms.items(), values):
        ax.hist(v, bins=bins, histtype="step", linewidth=1.6, label=f"{name} (n={len(v)}, mean {v.mean():.1f}%)")
    ax.set_xlabel("one-shot top-1 accuracy (%)")
    ax.set_ylabel("architectures")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("one-shot accuracy of uniformly sampled architectures")
    figure.savefig(path, dpi=120)
    return path


def write_report(
    out_dir: Path,
    *,
    truth: Any,
    ceiling: Mapping[str, Any],
    oneshot: Mapping[str, Mapping[str, float]],
    histograms: Mapping[str, Sequence[float]],
    similarity: Mapping[str, Mapping[int, np.ndarray]],
    choice_names: Sequence[str],
    top_k: Sequence[int],
    n_boot: int,
    seed: int,
    design: Mapping[str, Any],
    truth_source: str | None = None,
) -> dict[str, Any]:
    """Writes ``report.md``, ``ranking.csv``, ``paired.csv``, ``architectures.csv``, the plots and ``results.json``.

    Predictors scored against the ground truth (mean stand-alone accuracy over seeds): every
    supernet's one-shot accuracy and the naive proxies MAdds and params, each also with MAdds held
    fixed (partial Kendall tau). The ceiling row scores one half of the seeds against the other.
    Paired bootstraps compare the first supernet with each other predictor on the same resampled
    architectures. ``truth_source`` says where the ground truth comes from (default: stand-alone
    training with the study's seeds).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    mean = truth.mean
    predictors: dict[str, np.ndarray] = {name: np.array(list(accs.values())) for name, accs in oneshot.items()}
    predictors["MAdds (proxy)"] = truth["madds"].astype(np.float64)
    predictors["params (proxy)"] = truth["params"].astype(np.float64)
    ks = [k for k in top_k if k <= len(mean)]
    madds = predictors["MAdds (proxy)"]
    rows = ranking_report(mean, predictors, ks=ks, n_boot=n_boot, seed=seed, given=madds)
    halves = ceiling["halves"]
    a = truth[[f"seed{s}" for s in halves[0]]].mean(axis=1)
    b = truth[[f"seed{s}" for s in halves[1]]].mean(axis=1)
    ceiling_name = f"ceiling: stand-alone seeds {halves[0]} vs {halves[1]}"
    rows += ranking_report(b, {ceiling_name: a}, ks=ks, n_boot=n_boot, seed=seed, given=madds)
    write_csv(rows, out_dir / "ranking.csv")

    # Every pair of supernets (sf against ef for every pair of seeds, not only the first run against
    # the others), then every supernet against the two proxies.
    names = list(oneshot)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    pairs += [(name, proxy) for name in names for proxy in ("MAdds (proxy)", "params (proxy)")]
    paired = []
    for first, other in pairs:
        diff, low, high, p = paired_bootstrap_diff(
            kendall_tau, predictors[first], predictors[other], mean, n_boot=n_boot, seed=seed
        )
        paired.append({"comparison": f"tau({first}) - tau({other})", "diff": diff, "diff_low": low,
                       "diff_high": high, "p(diff <= 0)": p})  # fmt: skip
    if paired:
        write_csv(paired, out_dir / "paired.csv")

    arch_rows = []
    for i, row in enumerate(truth.rows):
        entry = {**row, "standalone_mean": float(mean[i])}
        entry.update({f"oneshot_{name}": accs[row["arch"]] for name, accs in oneshot.items()})
        arch_rows.append(entry)
    write_csv(arch_rows, out_dir / "architectures.csv")

    figures = []
    if oneshot:
        figures.append(plot_scatter(truth, {n: list(v.values()) for n, v in oneshot.items()}, out_dir / "scatter.png"))
    if histograms:
        figures.append(plot_histograms(histograms, out_dir / "histogram.png"))
    summaries = {}
    for name, matrices in similarity.items():
        figures.append(
            plot_similarity(
                matrices, out_dir / f"similarity_{name}.png", f"choice-block similarity: {name}", choice_names
            )
        )
        summaries[name] = similarity_summary(matrices)

    hist_stats = {
        name: {"n": len(v), "mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else math.nan,
               "min": float(np.min(v)), "max": float(np.max(v))}
        for name, v in histograms.items()
    }  # fmt: skip
    results = {
        "design": dict(design),
        "ceiling": dict(ceiling),
        "ranking": rows,
        "paired": paired,
        "histograms": hist_stats,
        "similarity": {
            name: {"overall": s["overall"], "per_layer": {str(k): v for k, v in s["per_layer"].items()}}
            for name, s in summaries.items()
        },  # fmt: skip
    }
    write_json_atomic(out_dir / "results.json", results)
    markdown = _markdown(rows, paired, ceiling, hist_stats, summaries, figures, truth, truth_source)
    write_text_atomic(out_dir / "report.md", markdown)
    return results


def _markdown(
    rows: list[dict[str, Any]],
    paired: list[dict[str, Any]],
    ceiling: Mapping[str, Any],
    hist_stats: Mapping[str, Mapping[str, float]],
    summaries: Mapping[str, Mapping[str, Any]],
    figures: Sequence[Path],
    truth: Any,
    truth_source: str | None = None,
) -> str:
    seeds = ", ".join(c.removeprefix("seed") for c in truth.seed_columns)
    source = truth_source or f"trained stand-alone with seeds {seeds}"
    low, high = (100 * v for v in ceiling["acc_range"])
    lines = [
        "# Ranking study report",
        "",
        f"Ground truth: {len(truth)} architectures {source}; accuracy "
        f"{low:.2f}-{high:.2f}% (std across architectures {100 * ceiling['acc_std_across_archs']:.2f} pp, "
        f"seed-to-seed std of one architecture {100 * ceiling['seed_std']:.2f} pp).",
        "",
        "Seed-to-seed tau predicted from these variance components for means of k seeds: "
        + ", ".join(
            f"{k.replace('_vs_', ' vs ').replace('_seeds', '')}: {v:.2f}"
            for k, v in ceiling.get("predicted_tau", {}).items()
        )  # fmt: skip
        + ".",
        "",
    ]
    halvings = ceiling.get("all_halvings")
    if halvings:
        gap = halvings["normal_model_tau_mean"] - halvings["kendall_tau_mean"]
        splits = f"{halvings['count']} balanced split{'' if halvings['count'] == 1 else 's'}"
        lines += [
            f"Ceiling over {splits} of the seeds ({halvings['seeds_per_half']} per half"
            f"{'' if halvings['exhaustive'] else ', drawn at random'}): Kendall tau "
            f"{halvings['kendall_tau_mean']:.3f} on average (sd {halvings['kendall_tau_std']:.3f}, "
            f"{halvings['kendall_tau_min']:.3f}-{halvings['kendall_tau_max']:.3f}); the normal model gives "
            f"{halvings['normal_model_tau_mean']:.3f} from the same splits' Pearson r, so the predictions above "
            f"are {'optimistic' if gap > 0 else 'pessimistic'} by about {abs(gap):.2f}.",
            "",
        ]
    lines += [
        "## Rank correlation with the ground truth (95% bootstrap intervals)",
        "",
        markdown_table(rows),
        "`partial_tau_given_madds` is Kendall's partial tau with MAdds held fixed: how well a predictor "
        "orders the architectures beyond what their size already tells (about 0 for a mere size meter; "
        "undefined for MAdds itself).",
        "",
    ]
    if paired:
        lines += ["## Paired bootstrap of Kendall tau differences", "", markdown_table(paired)]
    if hist_stats:
        table = [{"supernet": name, **stats} for name, stats in hist_stats.items()]
        lines += ["## One-shot accuracy of a uniform random sample", "", markdown_table(table)]
    if summaries:
        layers = list(next(iter(summaries.values()))["per_layer"])
        table = [
            {"supernet": name, "overall": s["overall"], **{f"layer {k}": s["per_layer"][k] for k in layers}}
            for name, s in summaries.items()
        ]
        lines += ["## Mean choice-block similarity (off-diagonal cosine, per layer)", "", markdown_table(table)]
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    return "\n".join(lines)
