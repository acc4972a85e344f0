"""The search stage: strategies (numpy/pymoo, no torch), the supernet evaluator, its cache, checkpoints."""

from fairnas.search.cache import ResultCache
from fairnas.search.checkpoint import CheckpointError, load_supernet
from fairnas.search.evaluator import DeviceBatches, SupernetEvaluator, materialise
from fairnas.search.strategies import (
    Arch,
    EvolutionSearch,
    ListSearch,
    NSGA2Search,
    RandomSearch,
    SearchProblem,
    SearchStrategy,
    is_feasible,
    limits_from,
    pareto_front,
    sample_feasible,
)

__all__ = [
    "Arch",
    "CheckpointError",
    "DeviceBatches",
    "ResultCache",
    "SupernetEvaluator",
    "load_supernet",
    "materialise",
    "EvolutionSearch",
    "ListSearch",
    "NSGA2Search",
    "RandomSearch",
    "SearchProblem",
    "SearchStrategy",
    "is_feasible",
    "limits_from",
    "pareto_front",
    "sample_feasible",
]
