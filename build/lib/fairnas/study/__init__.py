"""Ranking studies: stand-alone ground truth, supernets, one-shot evaluation and the report."""

from fairnas.study.benchmark import BenchmarkRankingStudy
from fairnas.study.ranking_study import STAGES, RankingStudy
from fairnas.study.runner import Job, JobFailed, run_jobs

__all__ = ["STAGES", "BenchmarkRankingStudy", "Job", "JobFailed", "RankingStudy", "run_jobs"]
