"""What a search writes: evaluated.csv, pareto.csv, pareto.png, best.yaml."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fairnas.search.pareto import pareto_front
from fairnas.search.problem import LIMIT_COSTS
from fairnas.utils import write_text_atomic

# name: the space's name(s) for the architecture; searched: False for a named model evaluated only
# because it is named (not proposed by the strategy), so a strategy's sample can still be told apart.
COLUMNS = ("arch", "name", "searched", "blocks", "acc1", "acc5", "loss", "madds", "params", "latency_ms")
ENTRY_KEYS = ("arch", "name", "searched", "blocks", "acc1", "acc5", "madds", "params", "latency_ms")


def with_named(records: Sequence[Mapping[str, Any]], named: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every evaluated architecture: the strategy's ``records``, then the space's named models that
    are not among them, each named one carrying its ``name``. The front and the best pick are taken
    over this whole set, so a named model that beats the strategy's finds is never left out."""
    names: dict[str, list[str]] = {}
    for name, r in named.items():
        names.setdefault(r["arch"], []).append(name)
    out = [{**r, "searched": True} for r in records]
    seen = {r["arch"] for r in out}
    out += [
        {**r, "searched": False} for name, r in named.items() if r["arch"] not in seen and names[r["arch"]][0] == name
    ]
    for r in out:
        if r["arch"] in names:
            r["name"] = ",".join(names[r["arch"]])
    return out


def within_limits(record: Mapping[str, Any], limits: Mapping[str, float | None]) -> bool:
    return all(v is None or record[LIMIT_COSTS[k]] <= v for k, v in limits.items() if k in LIMIT_COSTS)


def best_of(records: Sequence[Mapping[str, Any]], limits: Mapping[str, float | None]) -> Mapping[str, Any] | None:
    """The most accurate record within the limits (the first of equals), or None if none is."""
    feasible = [r for r in records if within_limits(r, limits)]
    return max(feasible, key=lambda r: r["acc1"]) if feasible else None


def records_csv(records: Sequence[Mapping[str, Any]]) -> str:
    columns = [c for c in COLUMNS if any(c in r for r in records)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: r.get(k, "") for k in columns})
    return out.getvalue()


def front_of(records: Sequence[Mapping[str, Any]], objectives: Sequence[str] = ("madds",)) -> list[int]:
    """Indices of the records on the Pareto front of accuracy (max) against ``objectives`` (min)."""
    points = [(r["acc1"], *(r[o] for o in objectives)) for r in records]
    return pareto_front(points, ["max", *["min"] * len(objectives)])


def plot_pareto(
    records: Sequence[Mapping[str, Any]],
    front: Sequence[int],
    path: str | Path,
    named: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "",
    latency_label: str = "",
):
    """Accuracy against MAdds (and against latency where every record has one): every evaluated point,
    the front highlighted, named models marked. ``latency_label`` says where the latency comes from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("madds", 1e6, "MAdds (M)")]
    if records and all("latency_ms" in r for r in records):
        panels.append(("latency_ms", 1.0, f"latency (ms){', ' + latency_label if latency_label else ''}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (key, unit, label) in zip(axes[0], panels, strict=True):
        ax.scatter(
            [r[key] / unit for r in records], [100 * r["acc1"] for r in records], s=12, c="0.7", label="evaluated"
        )
        pts = sorted((records[i][key] / unit, 100 * records[i]["acc1"]) for i in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="tab:red", ms=5, label="Pareto front")
        for name, r in (named or {}).items():
            ax.scatter([r[key] / unit], [100 * r["acc1"]], marker="*", s=140, zorder=5, label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("one-shot top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if len(panels) == 1:
        axes[0][0].set_title(title)
    else:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def best_yaml(
    records: Sequence[Mapping[str, Any]],
    front: Sequence[int],
    limits: Mapping[str, float | None],
    retrain: str,
    latency: Mapping[str, Any] | None = None,
) -> str:
    """The chosen architectures: the most accurate one under the limits, and the whole front.

    Args:
        records: Evaluated architectures.
        front: Indices of the front in ``records``.
        limits: ``max_madds`` / ``max_params`` / ``max_latency_ms`` of the search (None = no limit).
        retrain: Command prefix that retrains an architecture, completed with ``arch=...``.
        latency: Where ``latency_ms`` comes from (a latency table, or measured here), when it is given.
    """

    def entry(r: Mapping[str, Any]) -> dict[str, Any]:
        e = {k: r[k] for k in ENTRY_KEYS if k in r}
        e["retrain"] = f"{retrain} arch={r['arch']}"
        return e

    best = best_of(records, limits)
    named = sum("name" in r for r in records)
    doc = {
        "covers": f"all {len(records)} evaluated architectures ({named} of them named models of the space) "
        "within the limits",
        "limits": {k: v for k, v in limits.items() if v is not None},
        **({"latency": dict(latency)} if latency else {}),
        "best": entry(best) if best else None,
        "front": [entry(records[i]) for i in sorted(front, key=lambda i: records[i]["madds"])],
    }
    return yaml.safe_dump(doc, sort_keys=False, width=200)


def write_outputs(
    out_dir: Path,
    records: Sequence[Mapping[str, Any]],
    objectives: Sequence[str],
    limits: Mapping[str, float | None],
    retrain: str,
    named: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "",
    latency: Mapping[str, Any] | None = None,
) -> tuple[list[int], Any]:
    """Writes every output file; returns the front indices (in ``records``) and the figure.

    The front is that of every record within the limits (named models included when ``records``
    holds them, see :func:`with_named`); records over a limit are plotted but never on the front.
    """
    feasible = [i for i, r in enumerate(records) if within_limits(r, limits)]
    objectives = [o for o in objectives if all(o in r for r in records)] or ["madds"]
    front = [feasible[i] for i in front_of([records[i] for i in feasible], objectives)]
    write_text_atomic(out_dir / "evaluated.csv", records_csv(records))
    write_text_atomic(out_dir / "pareto.csv", records_csv([records[i] for i in front]))
    write_text_atomic(out_dir / "best.yaml", best_yaml(records, front, limits, retrain, latency))
    label = (
        "" if not latency else (latency.get("source", "") + (f": {latency['device']}" if latency.get("device") else ""))
    )
    figure = plot_pareto(records, front, out_dir / "pareto.png", named, title, label)
    return front, figure
