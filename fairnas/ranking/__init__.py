"""Ranking quality during training: ground truths and the :class:`RankingMonitor` callback (``callbacks=ranking``)."""

from fairnas.ranking.monitor import RankingMonitor, choose_archs
from fairnas.ranking.truth import GroundTruth, fairnas_mini, from_csv, load_ground_truth, nas_bench_macro

__all__ = [
    "GroundTruth",
    "RankingMonitor",
    "choose_archs",
    "fairnas_mini",
    "from_csv",
    "load_ground_truth",
    "nas_bench_macro",
]
