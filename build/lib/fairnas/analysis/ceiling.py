"""How well any evaluator could rank: the ground truth against itself (seed halves), and what more
seeds would give (Greiner's relation between Pearson's r and Kendall's tau for normal data)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from fairnas.analysis.ranking import kendall_tau, pearson_r


def predicted_ceiling(accs: np.ndarray) -> dict[str, Any]:
    """What the seed-to-seed tau should be for more seeds, from the variance components of ``accs`` (archs x seeds).

    Each run's accuracy is taken as the architecture's true accuracy (spread ``signal_std``
    across architectures) plus independent seed noise (``seed_std``). Two means of k seeds then
    correlate with r_k = s^2 / (s^2 + sigma^2 / k), and for normal data Kendall's tau is
    2/pi * asin(r_k) (Greiner's relation). Cheap to estimate on few architectures, so it tells
    how many seeds a design needs before the full ground truth is paid for.
    """
    k_total = accs.shape[1]
    noise = float(np.mean(accs.var(axis=1, ddof=1)))
    signal = max(float(accs.mean(axis=1).var(ddof=1)) - noise / k_total, 0.0)

    def tau(k: int) -> float:
        return normal_tau(signal / (signal + noise / k) if signal + noise > 0 else math.nan)

    return {
        "signal_std": math.sqrt(signal),
        "predicted_tau": {f"{k}_vs_{k}_seeds": tau(k) for k in (1, 2, 3, 4, 6)},
    }


def normal_tau(r: float) -> float:
    """Kendall's tau of bivariate normal data with Pearson correlation r (Greiner's relation)."""
    return float(2.0 / math.pi * math.asin(min(max(r, -1.0), 1.0))) if not math.isnan(r) else math.nan


def halving_taus(accs: np.ndarray, max_halvings: int = 500, seed: int = 0) -> dict[str, Any]:
    """Kendall tau between the seed means of every balanced split of the seeds of ``accs`` (archs x seeds).

    The ceiling's pre-declared halves are one such split; which seeds fall in which half moves
    the tau by several hundredths (sd 0.04 over the 35 splits of 8 seeds in docs/ranking-study.md),
    so the mean over all splits is the steadier estimate of what k seeds per half give. Beside it,
    ``normal_model_tau_mean`` is what Greiner's relation (2/pi asin r) gives from each split's
    Pearson r: when the true accuracies are far from normal (a few outliers, a crowded middle)
    tau falls short of it, and :func:`predicted_ceiling`, built on the same relation, is optimistic
    by about that shortfall. With more than ``max_halvings`` splits, that many are drawn at
    random with ``seed``.
    """
    n_seeds = accs.shape[1]
    k = n_seeds // 2
    total = math.comb(n_seeds, k) * math.comb(n_seeds - k, k) // 2
    if total <= max_halvings:
        splits = [
            (left, right)
            for left in itertools.combinations(range(n_seeds), k)
            for right in itertools.combinations([s for s in range(n_seeds) if s not in left], k)
            if left < right
        ]
    else:
        rng = np.random.default_rng(seed)
        perms = (rng.permutation(n_seeds) for _ in range(max_halvings))
        splits = [(sorted(p[:k]), sorted(p[k : 2 * k])) for p in perms]
    taus, model = [], []
    for left, right in splits:
        a, b = accs[:, list(left)].mean(axis=1), accs[:, list(right)].mean(axis=1)
        taus.append(kendall_tau(a, b))
        model.append(normal_tau(pearson_r(a, b)))
    return {
        "seeds_per_half": k,
        "count": len(splits),
        "exhaustive": total <= max_halvings,
        "kendall_tau_mean": float(np.mean(taus)),
        "kendall_tau_std": float(np.std(taus)),
        "kendall_tau_min": float(np.min(taus)),
        "kendall_tau_max": float(np.max(taus)),
        "normal_model_tau_mean": float(np.mean(model)),
    }
