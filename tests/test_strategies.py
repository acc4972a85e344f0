"""Search strategies on toy problems whose optimum and Pareto front are known by enumeration."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import numpy as np
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st

from fairnas.errors import ConfigError
from fairnas.search import (
    Arch,
    EvolutionSearch,
    ListSearch,
    NSGA2Search,
    RandomSearch,
    SearchProblem,
    SearchStrategy,
    pareto_front,
    sample_feasible,
)
from fairnas.search.problem import ENUMERATE_LIMIT, MAX_DRAWS_PER_SAMPLE

L, M = 5, 4  # 1024 architectures: small enough to enumerate


class Toy:
    """Additive accuracy / MAdds / params tables plus one interaction term, with a record of every ask.

    Accuracy grows with MAdds (bigger ops are better, as in real spaces) plus noise, so the
    accuracy-vs-MAdds Pareto front has many points.
    """

    def __init__(self, seed: int = 1, layers: int = L, choices: int = M) -> None:
        rng = np.random.default_rng(seed)
        self.layers, self.choices = layers, choices
        self.madds = rng.uniform(1, 10, size=(layers, choices))
        self.params = rng.uniform(1, 5, size=(layers, choices))
        self.weights = 0.3 * self.madds + rng.normal(size=(layers, choices))
        self.interaction = rng.normal(scale=0.5, size=(choices, choices))
        self.asked: list[Arch] = []
        self.calls = 0
        self.cost_calls = 0
        self.progress: list[int] = []

    def acc(self, arch: Arch) -> float:
        return float(self.weights[np.arange(self.layers), arch].sum() + self.interaction[arch[0], arch[-1]])

    def costs(self, arch: Arch) -> dict[str, float]:
        self.cost_calls += 1
        idx = np.arange(self.layers), arch
        return {"madds": float(self.madds[idx].sum()), "params": float(self.params[idx].sum())}

    def accuracy(self, archs: Sequence[Arch]) -> list[float]:
        self.calls += 1
        self.asked.extend(archs)
        return [self.acc(a) for a in archs]

    def problem(self) -> SearchProblem:
        return SearchProblem(self.layers, self.choices, self.costs, self.accuracy, self.progress.append)

    def all_archs(self) -> list[Arch]:
        return list(itertools.product(range(self.choices), repeat=self.layers))

    def best(self, max_madds: float = np.inf) -> Arch:
        feasible = [a for a in self.all_archs() if self.costs(a)["madds"] <= max_madds]
        return max(feasible, key=self.acc)

    def front(self, max_madds: float = np.inf) -> set[Arch]:
        feasible = [a for a in self.all_archs() if self.costs(a)["madds"] <= max_madds]
        points = [(self.acc(a), self.costs(a)["madds"]) for a in feasible]
        return {feasible[i] for i in pareto_front(points, ["max", "min"])}

    def median_madds(self) -> float:
        return float(np.median([self.costs(a)["madds"] for a in self.all_archs()]))


def run(strategy: SearchStrategy, toy: Toy | None = None) -> tuple[list[Arch], Toy]:
    """Search a fresh toy; checks the contract every strategy shares."""
    toy = toy or Toy()
    found = strategy.search(toy.problem())
    assert found == toy.asked, "returns exactly what it evaluated, in evaluation order"
    assert len(set(found)) == len(found), "no architecture is asked twice"
    assert sum(toy.progress) == len(found) and len(toy.progress) == toy.calls
    assert all(len(a) == toy.layers and all(0 <= c < toy.choices for c in a) for a in found)
    assert all(type(c) is int for a in found for c in a)
    return found, toy


STRATEGIES = {
    "random": lambda seed, **kw: RandomSearch(num_samples=200, seed=seed, **kw),
    "evolution": lambda seed, **kw: EvolutionSearch(20, 8, 5, 0.2, 10, 10, seed=seed, **kw),
    "nsga2": lambda seed, **kw: NSGA2Search(20, 8, ["madds"], seed=seed, **kw),
}


class Greedy(SearchStrategy):
    """A strategy written outside the package: on the public base alone, it asks everything twice."""

    def search(self, problem: SearchProblem) -> list[Arch]:
        oracle = self.oracle(problem)
        archs = sample_feasible(np.random.default_rng(self.seed), problem, self.limits, 30)
        oracle(archs[:20])
        oracle(archs)  # the first 20 again: only the 10 new ones reach the supernet
        return oracle.order


def test_a_new_strategy_on_the_public_base_gets_the_once_per_architecture_rule():
    found, toy = run(Greedy(seed=3, max_madds=Toy().median_madds()))
    assert len(found) == 30 and toy.calls == 2 and toy.progress == [20, 10]
    over = next(a for a in toy.all_archs() if toy.costs(a)["madds"] > toy.median_madds())
    with pytest.raises(AssertionError, match="violates the limits"):
        Greedy(max_madds=toy.median_madds()).oracle(toy.problem())([over])


# ---------------------------------------------------------------- list


def test_list_search_evaluates_exactly_the_listed_archs_in_order(tmp_path):
    path = tmp_path / "archs.txt"
    path.write_text("# a study's sample\n0-1-2-3-0\n\n3-3-3-3-3  # largest\n0-1-2-3-0\n")
    found, toy = run(ListSearch(archs=[[1, 1, 1, 1, 1]], path=str(path), batch_size=2))
    assert found == [(1, 1, 1, 1, 1), (0, 1, 2, 3, 0), (3, 3, 3, 3, 3)]  # repeats evaluated once
    assert toy.calls == 2
    limit = toy.costs((3, 3, 3, 3, 3))["madds"] - 1e-9  # the largest is over it and left out
    assert (3, 3, 3, 3, 3) not in run(ListSearch(path=str(path), max_madds=limit))[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "needs architectures"),
        ({"archs": ["0-x-1-1-1"]}, r"strategy.archs\[0\]: '0-x-1-1-1' is not an architecture"),
        ({"path": "/nonexistent/archs.txt"}, "cannot read /nonexistent/archs.txt"),
    ],
)
def test_list_search_bad_input(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ListSearch(**kwargs)


@pytest.mark.parametrize("arch", ["0-1-2-3", "0-1-2-3-4"])
def test_list_search_rejects_archs_of_another_space(arch):
    with pytest.raises(ConfigError, match="not an architecture of this space"):
        ListSearch(archs=[arch]).search(Toy().problem())


def test_list_search_with_limits_no_listed_architecture_meets_says_so():
    toy = Toy()
    archs = toy.all_archs()[:5]
    smallest = min(toy.costs(a)["madds"] for a in archs)
    with pytest.raises(ConfigError, match=r"none of the 5 architectures is within the limits \(max_madds=0.5; "):
        ListSearch(archs=archs, max_madds=0.5).search(toy.problem())
    assert toy.progress == []  # refused before any accuracy was measured
    with pytest.raises(ConfigError, match=f"madds {smallest:g}"):
        ListSearch(archs=archs, max_madds=0.5).search(toy.problem())


# ---------------------------------------------------------------- random search


def test_random_search_evaluates_distinct_samples_in_batches():
    found, toy = run(RandomSearch(num_samples=230, seed=0, batch_size=50))
    assert len(found) == 230
    assert [len(b) for b in np.split(np.array(found), [50, 100, 150, 200])] == [50, 50, 50, 50, 30]
    assert toy.progress == [50, 50, 50, 50, 30]


def test_random_search_with_budget_over_the_space_evaluates_everything_and_finds_the_optimum():
    found, toy = run(RandomSearch(num_samples=5000, seed=0))
    assert set(found) == set(toy.all_archs())  # stopped after the bounded retries, not forever
    assert max(found, key=toy.acc) == toy.best()


def test_random_search_finds_the_optimum_under_a_limit():
    toy = Toy()
    limit = toy.median_madds()
    found, toy = run(RandomSearch(num_samples=400, seed=0, max_madds=limit), toy)
    assert all(toy.costs(a)["madds"] <= limit for a in toy.asked)
    assert max(found, key=toy.acc) == toy.best(limit)


# ---------------------------------------------------------------- evolution


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evolution_finds_the_optimum_with_a_fraction_of_the_space(seed):
    found, toy = run(EvolutionSearch(20, 10, 5, 0.2, 10, 10, seed=seed))
    assert len(found) <= 220 < len(toy.all_archs())
    assert max(found, key=toy.acc) == toy.best()


@pytest.mark.parametrize("seed", [0, 1])
def test_evolution_finds_the_constrained_optimum_and_never_evaluates_over_the_limit(seed):
    toy = Toy()
    limit = toy.median_madds()
    found, toy = run(EvolutionSearch(20, 10, 5, 0.2, 10, 10, seed=seed, max_madds=limit), toy)
    assert all(toy.costs(a)["madds"] <= limit for a in toy.asked)
    assert max(found, key=toy.acc) == toy.best(limit)
    assert toy.costs(toy.best())["madds"] > limit  # the limit matters: the free optimum is excluded


def test_evolution_stops_early_when_no_new_child_exists():
    toy = Toy(layers=2, choices=3)  # 9 architectures
    found, _ = run(EvolutionSearch(4, 50, 2, 0.5, 5, 5, seed=0), toy)
    assert set(found) == set(toy.all_archs())


# ---------------------------------------------------------------- NSGA-II


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nsga2_recovers_the_true_pareto_front(seed):
    found, toy = run(NSGA2Search(population=30, generations=15, objectives=["madds"], seed=seed))
    true_front = toy.front()
    assert len(true_front) >= 10
    assert true_front <= set(found)
    points = [(toy.acc(a), toy.costs(a)["madds"]) for a in found]
    assert {found[i] for i in pareto_front(points, ["max", "min"])} == true_front
    assert len(found) <= 30 * 15 < len(toy.all_archs())


@pytest.mark.parametrize("seed", [0, 1])
def test_nsga2_recovers_the_constrained_front_and_never_evaluates_over_the_limit(seed):
    toy = Toy()
    limit = toy.median_madds()
    found, toy = run(NSGA2Search(30, 15, ["madds"], seed=seed, max_madds=limit), toy)
    assert all(toy.costs(a)["madds"] <= limit for a in toy.asked)
    assert toy.front(limit) <= set(found)


def test_nsga2_with_fewer_generations_evaluates_a_prefix_of_the_longer_run():
    # benchmarks/bench_front.py reads what a smaller budget finds off one longer search
    short, _ = run(NSGA2Search(20, 4, ["madds"], seed=5))
    long, _ = run(NSGA2Search(20, 8, ["madds"], seed=5))
    assert len(long) > len(short) >= 60 and long[: len(short)] == short


def test_nsga2_with_two_cost_objectives_and_a_params_limit():
    toy = Toy()
    found, toy = run(NSGA2Search(20, 5, ["madds", "params"], seed=0, max_params=15.0), toy)
    assert found and all(toy.costs(a)["params"] <= 15.0 for a in found)


def test_nsga2_rejects_an_objective_the_cost_model_lacks():
    with pytest.raises(ConfigError, match="latency_ms"):
        NSGA2Search(10, 2, ["latency_ms"], seed=0).search(Toy().problem())


# ---------------------------------------------------------------- shared contract


@pytest.mark.parametrize("name", STRATEGIES)
def test_same_seed_same_evaluations_other_seed_differs(name):
    make = STRATEGIES[name]
    first, _ = run(make(0))
    again, _ = run(make(0))
    other, _ = run(make(1))
    assert first == again
    assert first != other
    strategy = make(0)  # a strategy object can search twice and repeats itself
    assert strategy.search(Toy().problem()) == strategy.search(Toy().problem())


@pytest.mark.parametrize("name", STRATEGIES)
def test_unsatisfiable_limits_fail_fast_with_a_helpful_message(name):
    toy = Toy()
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="unsatisfiable") as info:
        STRATEGIES[name](0, max_madds=1.0, max_params=1e9).search(toy.problem())
    assert time.perf_counter() - start < 5
    assert "max_madds=1" in str(info.value) and "madds=" in str(info.value) and "params=" in str(info.value)
    assert toy.calls == 0 and toy.cost_calls <= len(toy.all_archs())  # the small toy space is walked once


def test_unsatisfiable_limits_in_a_large_space_stop_after_the_bounded_draws():
    toy = Toy(layers=12, choices=6)
    assert toy.choices**toy.layers > ENUMERATE_LIMIT
    with pytest.raises(ConfigError, match=f"{MAX_DRAWS_PER_SAMPLE} random architectures.*unsatisfiable"):
        RandomSearch(num_samples=10, seed=0, max_madds=5.0).search(toy.problem())
    assert toy.calls == 0 and toy.cost_calls == MAX_DRAWS_PER_SAMPLE


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_latency_limit_without_a_latency_model_is_a_config_error(name):
    with pytest.raises(ConfigError, match="latency_ms"):
        STRATEGIES[name](0, max_latency_ms=5.0).search(Toy().problem())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RandomSearch(num_samples=0), r"strategy\.num_samples must be an integer >= 1, got 0$"),
        (lambda: RandomSearch(batch_size=0), r"strategy\.batch_size must be an integer >= 1, got 0$"),
        (lambda: RandomSearch(seed=-1), r"strategy\.seed must be an integer >= 0, got -1$"),
        (lambda: RandomSearch(num_samples="many"), r"strategy\.num_samples must be an integer >= 1, got 'many'"),
        (lambda: RandomSearch(max_madds="lots"), r"strategy\.max_madds must be a finite number or null .*'lots'"),
        (lambda: RandomSearch(max_params=float("inf")), r"strategy\.max_params must be a finite number .*got inf"),
        (lambda: EvolutionSearch(mutation_prob=0.0), r"strategy\.mutation_prob must be in \(0, 1\], got 0\.0"),
        (lambda: EvolutionSearch(parents=0), r"strategy\.parents must be an integer >= 1, got 0$"),
        (lambda: EvolutionSearch(num_mutations=2.5), r"strategy\.num_mutations must be an integer >= 0, got 2\.5"),
        (lambda: NSGA2Search(population=1), r"strategy\.population must be an integer >= 2, got 1$"),
        (lambda: NSGA2Search(generations=0), r"strategy\.generations must be an integer >= 1, got 0$"),
        (lambda: NSGA2Search(objectives="madds"), r"strategy\.objectives must be a list of cost names.*got 'madds'"),
        (lambda: NSGA2Search(objectives=["madds", "madds"]), r"strategy\.objectives lists a cost twice"),
    ],
)
def test_invalid_settings_are_config_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_search_problem_rejects_an_empty_space():
    with pytest.raises(ConfigError, match="at least one layer and one choice, got L=0, m=3"):
        SearchProblem(0, 3, lambda a: {}, lambda archs: [])


# ---------------------------------------------------------------- sample_feasible


def test_sample_feasible_is_distinct_feasible_and_skips_the_excluded():
    toy = Toy()
    limits = {"madds": toy.median_madds()}
    exclude = set(toy.all_archs()[::2])
    archs = sample_feasible(np.random.default_rng(0), toy.problem(), limits, 100, exclude=exclude)
    assert len(archs) == len(set(archs)) == 100
    assert not set(archs) & exclude
    assert all(toy.costs(a)["madds"] <= limits["madds"] for a in archs)


def test_sample_feasible_returns_fewer_when_the_feasible_space_is_exhausted():
    toy = Toy(layers=2, choices=3)
    archs = sample_feasible(np.random.default_rng(0), toy.problem(), {}, 20)
    assert sorted(archs) == toy.all_archs()
    assert sample_feasible(np.random.default_rng(0), toy.problem(), {}, 5, exclude=toy.all_archs()) == []


# ---------------------------------------------------------------- pareto_front


def test_pareto_front_on_hand_made_points():
    # (accuracy: max, madds: min)
    points = [(0.9, 300), (0.8, 200), (0.85, 300), (0.8, 250), (0.7, 100), (0.9, 300), (0.6, 100)]
    assert pareto_front(points, ["max", "min"]) == [0, 1, 4, 5]  # duplicates (0 and 5) are both kept
    assert pareto_front(points, ["min", "max"]) == [2, 3, 6]  # flipped senses: (0.85, 300) beats (0.9, 300)
    assert pareto_front([(1, 1), (1, 1)], ["max", "max"]) == [0, 1]
    assert pareto_front([(1, 2), (1, 3)], ["max", "max"]) == [1]  # a tie in one objective, better in the other
    assert pareto_front([(3,), (5,), (5,)], ["max"]) == [1, 2]
    assert pareto_front([(3,), (5,)], ["min"]) == [0]
    assert pareto_front([], ["max"]) == []


def test_pareto_front_rejects_bad_input():
    with pytest.raises(ValueError, match=r"senses must be 'max' or 'min', got \['max', 'up'\]"):
        pareto_front([(1, 2)], ["max", "up"])
    with pytest.raises(ValueError, match=r"each point needs 2 objective values, got .* shape \(1, 3\)"):
        pareto_front([(1, 2, 3)], ["max", "min"])
    with pytest.raises(ValueError, match="points contain NaN"):
        pareto_front([(float("nan"), 2)], ["max", "min"])


@settings(max_examples=100, deadline=None)
@given(
    points=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)), max_size=25),
    senses=st.lists(st.sampled_from(["max", "min"]), min_size=3, max_size=3),
)
def test_pareto_front_matches_the_definition(points, senses):
    sign = [1 if s == "max" else -1 for s in senses]

    def dominates(p, q):
        p, q = [a * s for a, s in zip(p, sign)], [a * s for a, s in zip(q, sign)]
        return all(a >= b for a, b in zip(p, q)) and any(a > b for a, b in zip(p, q))

    expected = [i for i, q in enumerate(points) if not any(dominates(p, q) for p in points)]
    assert pareto_front(points, senses) == expected


@pytest.mark.parametrize(("n", "k", "ties"), [(3000, 2, False), (3000, 2, True), (1000, 3, True), (500, 4, False)])
def test_pareto_front_is_the_pairwise_definition_on_large_sets(n, k, ties):
    rng = np.random.default_rng(n + k)
    points = rng.integers(0, 40, (n, k)).astype(float) if ties else rng.random((n, k))
    points[1] = points[0]  # an exact duplicate
    senses = ["max", *["min"] * (k - 1)]
    gains = points * np.array([1.0 if s == "max" else -1.0 for s in senses])
    expected = [
        i for i, p in enumerate(gains) if not np.any(np.all(gains >= p, axis=1) & np.any(gains > p, axis=1))
    ]  # the O(n^2) definition pareto_front used before
    assert pareto_front(points, senses) == expected


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "strategy").glob("*.yaml")))
def test_strategy_configs_instantiate_and_search(name):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("search", overrides=[f"strategy={name}", "seed=0"])  # as search.py composes it
    if name == "list":  # evaluates given architectures: the whole toy space here
        cfg.strategy.archs = [list(a) for a in itertools.product(range(3), repeat=3)]
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, SearchStrategy) and strategy.seed == 0 and strategy.limits == {}
    toy = Toy(layers=3, choices=3)
    all_madds = sorted(toy.costs(a)["madds"] for a in itertools.product(range(3), repeat=3))
    limit = all_madds[len(all_madds) // 2]  # the median: binds for half of the space
    cfg.strategy.max_madds = limit
    limited = instantiate(cfg.strategy)
    assert limited.limits == {"madds": limit}
    found = limited.search(toy.problem())
    assert found and all(toy.costs(a)["madds"] <= limit for a in toy.asked)


def test_strategy_config_names_are_the_four_strategies():
    assert sorted(p.stem for p in (ROOT / "conf" / "strategy").glob("*.yaml")) == [
        "evolution",
        "list",
        "nsga2",
        "random",
    ]
