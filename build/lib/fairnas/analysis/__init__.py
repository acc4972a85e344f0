"""Analysis for ranking studies: rank statistics with bootstrap intervals, cost-stratified samples, block similarity."""

from fairnas.analysis.ceiling import halving_taus, predicted_ceiling
from fairnas.analysis.ranking import (
    bootstrap_ci,
    kendall_tau,
    markdown_table,
    paired_bootstrap_diff,
    partial_kendall_tau,
    pearson_r,
    ranking_report,
    spearman_rho,
    top_k_indices,
    top_k_precision,
    write_csv,
)
from fairnas.analysis.sampling import extreme_archs, read_archs, stratified_sample, write_archs
from fairnas.analysis.similarity import block_similarity, plot_similarity, similarity_summary

__all__ = [
    "block_similarity",
    "bootstrap_ci",
    "extreme_archs",
    "halving_taus",
    "kendall_tau",
    "markdown_table",
    "paired_bootstrap_diff",
    "partial_kendall_tau",
    "pearson_r",
    "plot_similarity",
    "predicted_ceiling",
    "ranking_report",
    "read_archs",
    "similarity_summary",
    "spearman_rho",
    "stratified_sample",
    "top_k_indices",
    "top_k_precision",
    "write_archs",
    "write_csv",
]
