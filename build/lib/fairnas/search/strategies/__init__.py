"""Search strategies, one file each, on the public base in ``base.py``: random, list, evolution, NSGA-II."""

from fairnas.search.strategies.base import AccuracyOracle, SearchStrategy, check_count
from fairnas.search.strategies.evolution import EvolutionSearch
from fairnas.search.strategies.list_search import ListSearch
from fairnas.search.strategies.nsga2 import NSGA2Search
from fairnas.search.strategies.random_search import RandomSearch

__all__ = [
    "AccuracyOracle",
    "EvolutionSearch",
    "ListSearch",
    "NSGA2Search",
    "RandomSearch",
    "SearchStrategy",
    "check_count",
]
