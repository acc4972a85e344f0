"""Ranking studies: a ground truth (trained stand-alone or a benchmark's), supernets, one-shot scores, a report."""

from fairnas.study.benchmark import BenchmarkGroundTruth, BenchmarkRankingStudy
from fairnas.study.ground_truth import GroundTruthSource, GroundTruthTable, TrainedGroundTruth
from fairnas.study.ranking_study import STAGES, RankingStudy
from fairnas.study.runner import Job, JobFailed, run_jobs

__all__ = [
    "STAGES",
    "BenchmarkGroundTruth",
    "BenchmarkRankingStudy",
    "GroundTruthSource",
    "GroundTruthTable",
    "Job",
    "JobFailed",
    "RankingStudy",
    "TrainedGroundTruth",
    "run_jobs",
]
