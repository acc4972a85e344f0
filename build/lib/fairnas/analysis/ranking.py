"""Ranking statistics between predicted (one-shot, supernet) and true (stand-alone) accuracies.

The paper's ranking experiment asks how well the supernet orders architectures, so the statistics
here are rank correlations (Kendall tau-b, Spearman rho), the linear correlation (Pearson r) and
the top-k precision, each with a percentile-bootstrap confidence interval over architectures.
Correlations delegate to :mod:`scipy.stats` so that values match it exactly; inputs that are
constant (no ranking to compare) give NaN rather than a warning.

Accuracies are "higher is better" throughout. All randomness comes from a numpy generator seeded
from an explicit ``seed`` argument.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fairnas.errors import ConfigError

StatFn = Callable[[np.ndarray, np.ndarray], float]


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies of two paired samples."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    if x.size < 2:
        raise ValueError(f"a ranking statistic needs at least 2 architectures, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("accuracies must be finite numbers (is an evaluation result missing?)")
    return x, y


def _constant(x: np.ndarray) -> bool:
    return bool(x.max() == x.min())


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall tau-b (tie-corrected), as ``scipy.stats.kendalltau``; NaN if either input is constant."""
    x, y = _pair(a, b)
    if _constant(x) or _constant(y):
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def spearman_rho(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rho (average ranks for ties), as ``scipy.stats.spearmanr``; NaN if either input is constant."""
    x, y = _pair(a, b)
    if _constant(x) or _constant(y):
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def pearson_r(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson r, as ``scipy.stats.pearsonr``; NaN if either input is constant."""
    x, y = _pair(a, b)
    if _constant(x) or _constant(y):
        return math.nan
    return float(stats.pearsonr(x, y).statistic)


def partial_kendall_tau(a: Sequence[float], b: Sequence[float], given: Sequence[float]) -> float:
    """Kendall's partial tau of ``a`` and ``b`` with ``given`` held fixed; NaN where it is undefined.

    ``(tau_ab - tau_ag * tau_bg) / sqrt((1 - tau_ag^2) (1 - tau_bg^2))`` (Kendall, 1942), from the
    tau-b of each pair. In a ranking study with ``given`` the MAdds, it asks whether a predictor
    orders architectures correctly beyond what their size already tells: near 0 for a predictor
    that is only a size meter, 1 for one that agrees with the ground truth. Undefined (NaN) when
    either input ranks exactly like ``given`` (``|tau| = 1``) or any input is constant.
    """
    x, y = _pair(a, b)
    _, z = _pair(a, given)
    tau_xy, tau_xz, tau_yz = kendall_tau(x, y), kendall_tau(x, z), kendall_tau(y, z)
    denominator = (1.0 - tau_xz**2) * (1.0 - tau_yz**2)
    if not denominator > 1e-12:  # |tau| = 1 up to rounding; also catches the NaN of a constant input
        return math.nan
    return float((tau_xy - tau_xz * tau_yz) / math.sqrt(denominator))


def top_k_indices(values: Sequence[float], k: int) -> np.ndarray:
    """Indices of the k highest values; ties go to the lower index so the result is deterministic."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if not 1 <= k <= x.size:
        raise ValueError(f"top-k needs 1 <= k <= {x.size} (the number of architectures), got k={k}")
    return np.argsort(-x, kind="stable")[:k]


def top_k_precision(pred: Sequence[float], true: Sequence[float], k: int) -> float:
    """|true top-k ∩ predicted top-k| / k: the share of the truly best k that the predictor also puts in its top k.

    Higher is better (1 means the predictor finds exactly the best k). Ties in either ranking are
    broken by index (the earlier architecture ranks higher), so tied inputs give a deterministic,
    order-dependent value.
    """
    x, y = _pair(pred, true)
    return len(set(top_k_indices(x, k).tolist()) & set(top_k_indices(y, k).tolist())) / k


def _check_boot(n_boot: int, alpha: float) -> None:
    if int(n_boot) < 1:
        raise ConfigError(f"n_boot must be a positive number of bootstrap replicates, got {n_boot}")
    if not 0.0 < float(alpha) < 1.0:
        raise ConfigError(f"alpha must be in (0, 1) (0.05 gives a 95% interval), got {alpha}")


def _interval(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN ones come from constant resamples and are dropped)."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(finite, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(low), float(high)


def bootstrap_ci(
    stat_fn: StatFn,
    a: Sequence[float],
    b: Sequence[float],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    given: Sequence[float] | None = None,
) -> tuple[float, float, float]:
    """Percentile-bootstrap interval of ``stat_fn(a, b)``, resampling architectures (pairs) with replacement.

    The uncertainty of a ranking study comes from which architectures were trained, so whole
    (a_i, b_i) pairs are resampled. Replicates where the statistic is undefined (NaN, e.g. a
    resample of one repeated architecture) are left out of the interval. With ``given`` (a third
    value per architecture, e.g. its MAdds for :func:`partial_kendall_tau`), the statistic is
    ``stat_fn(a, b, given)`` and the triples are resampled together.

    Returns:
        ``(estimate, low, high)``: the statistic on the full data and the ``1 - alpha`` interval.
    """
    _check_boot(n_boot, alpha)
    columns = _pair(a, b) if given is None else (*_pair(a, b), _pair(a, given)[1])
    estimate = float(stat_fn(*columns))
    rng = np.random.default_rng(seed)
    n = columns[0].size
    indices = rng.integers(0, n, size=(int(n_boot), n))
    replicates = np.array([stat_fn(*(c[i] for c in columns)) for i in indices], dtype=np.float64)
    return (estimate, *_interval(replicates, alpha))


def paired_bootstrap_diff(
    stat_fn: StatFn,
    pred1: Sequence[float],
    pred2: Sequence[float],
    true: Sequence[float],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float, float]:
    """Paired bootstrap of ``stat_fn(pred1, true) - stat_fn(pred2, true)``: is predictor 1 better than 2?

    Both predictors are scored on the SAME resampled architectures in every replicate, so the
    interval reflects the difference between predictors, not the (shared) luck of the draw.

    Returns:
        ``(diff, low, high, p_le_zero)``: the difference on the full data, its ``1 - alpha``
        percentile interval, and the fraction of (finite) replicates with difference <= 0 (a
        one-sided bootstrap p-value for "predictor 1 is better").
    """
    _check_boot(n_boot, alpha)
    p1, t = _pair(pred1, true)
    p2, _ = _pair(pred2, true)
    diff = float(stat_fn(p1, t) - stat_fn(p2, t))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, t.size, size=(int(n_boot), t.size))
    replicates = np.array([stat_fn(p1[i], t[i]) - stat_fn(p2[i], t[i]) for i in indices], dtype=np.float64)
    finite = replicates[np.isfinite(replicates)]
    p_le_zero = float(np.mean(finite <= 0.0)) if finite.size else math.nan
    return (diff, *_interval(replicates, alpha), p_le_zero)


STATISTICS: dict[str, StatFn] = {
    "kendall_tau": kendall_tau,
    "spearman_rho": spearman_rho,
    "pearson_r": pearson_r,
}


def ranking_report(
    true: Sequence[float],
    predictors: Mapping[str, Sequence[float]],
    ks: Sequence[int] = (5, 10),
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    given: Sequence[float] | None = None,
    given_name: str = "madds",
) -> list[dict[str, Any]]:
    """One row per predictor: tau, rho, r and top-k precisions, each with its bootstrap interval.

    Every statistic and predictor uses the same seed, hence the same resampled architectures,
    so intervals of different predictors are directly comparable.

    Args:
        true: Stand-alone (ground-truth) accuracy of each architecture.
        predictors: Name -> predicted accuracy of the same architectures, in the same order.
        ks: Top-k precisions to report; each must be at most the number of architectures.
        n_boot: Bootstrap replicates.
        alpha: One minus the interval's coverage.
        seed: Seed of the bootstrap resampling.
        given: A cost of each architecture (e.g. MAdds): adds the partial Kendall tau with it held
            fixed, ``partial_tau_given_{given_name}`` (:func:`partial_kendall_tau`).
        given_name: The cost's name in that key.

    Returns:
        Flat rows (CSV-ready): ``predictor``, ``n``, and for each statistic ``s`` the keys
        ``s``, ``s_low``, ``s_high`` (``s`` is ``kendall_tau``, ``spearman_rho``, ``pearson_r``,
        ``partial_tau_given_{given_name}`` with ``given``, ``top{k}_precision``).
    """
    t = np.asarray(true, dtype=np.float64).ravel()
    for k in ks:
        if not 1 <= int(k) <= t.size:
            raise ConfigError(f"ks: top-{k} precision needs 1 <= k <= {t.size} (the number of architectures)")
    statistics = dict(STATISTICS)
    if given is not None:
        statistics[f"partial_tau_given_{given_name}"] = partial_kendall_tau
    for k in ks:
        statistics[f"top{int(k)}_precision"] = lambda p, q, k=int(k): top_k_precision(p, q, k)
    rows = []
    for name, pred in predictors.items():
        p = np.asarray(pred, dtype=np.float64).ravel()
        if p.size != t.size:
            raise ValueError(f"predictor {name!r} has {p.size} accuracies but there are {t.size} true ones")
        row: dict[str, Any] = {"predictor": str(name), "n": int(t.size)}
        for key, fn in statistics.items():
            extra = {"given": given} if fn is partial_kendall_tau else {}
            estimate, low, high = bootstrap_ci(fn, p, t, n_boot=n_boot, alpha=alpha, seed=seed, **extra)
            row.update({key: estimate, f"{key}_low": low, f"{key}_high": high})
        rows.append(row)
    return rows


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Union of the rows' keys, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of report rows; a statistic with ``_low``/``_high`` keys shows as ``est [low, high]``."""
    if not rows:
        return ""
    keys = _columns(rows)
    shown = [
        k
        for k in keys
        if not (
            (k.endswith("_low") and k[: -len("_low")] in keys) or (k.endswith("_high") and k[: -len("_high")] in keys)
        )
    ]
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    for row in rows:
        cells = []
        for k in shown:
            value = row.get(k, "")
            if f"{k}_low" in row and f"{k}_high" in row:
                cells.append(f"{_cell(value)} [{_cell(row[f'{k}_low'])}, {_cell(row[f'{k}_high'])}]")
            else:
                cells.append(_cell(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Writes report rows to CSV (full float precision), creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(rows))
        writer.writeheader()
        writer.writerows(rows)
    return path
