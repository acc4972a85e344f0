"""The search stage: the problem and its strategies (numpy/pymoo, no torch), the supernet evaluator,
its cache, checkpoints and outputs."""

from fairnas.arch import Arch
from fairnas.errors import CheckpointError
from fairnas.search.cache import ResultCache
from fairnas.search.evaluator import DeviceBatches, SupernetEvaluator, materialise
from fairnas.search.pareto import pareto_front
from fairnas.search.problem import SearchProblem, is_feasible, limits_from, sample_feasible
from fairnas.search.strategies import (
    AccuracyOracle,
    EvolutionSearch,
    ListSearch,
    NSGA2Search,
    RandomSearch,
    SearchStrategy,
)

__all__ = [
    "AccuracyOracle",
    "Arch",
    "CheckpointError",
    "DeviceBatches",
    "EvolutionSearch",
    "ListSearch",
    "NSGA2Search",
    "RandomSearch",
    "ResultCache",
    "SearchProblem",
    "SearchStrategy",
    "SupernetEvaluator",
    "is_feasible",
    "limits_from",
    "materialise",
    "pareto_front",
    "sample_feasible",
]
