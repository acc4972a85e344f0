"""The public base of search strategies: which architectures to evaluate with the trained supernet.

A strategy only sees a :class:`SearchProblem`: the shape of the space (L layers, m choices), an exact
and cheap cost model, and an expensive accuracy oracle (supernet evaluation). It never imports torch,
so it is tested on toy problems whose optimum and Pareto front are known by enumeration.

Every strategy:

* owns ALL its randomness through ``np.random.default_rng(seed)``, created afresh in ``search``, so
  the same seed gives the same evaluated list and ``search`` may be called twice;
* checks the limits (``max_madds``, ``max_params``, ``max_latency_ms``) with ``problem.costs``
  BEFORE asking for accuracy: an architecture over a limit is never evaluated;
* asks for accuracy only through :meth:`SearchStrategy.oracle`, an :class:`AccuracyOracle` that
  asks ``problem.accuracy`` for each architecture at most once and in batches, so the caller can
  batch the supernet evaluation and show progress;
* returns the architectures it evaluated, in evaluation order, without duplicates.

A new strategy subclasses :class:`SearchStrategy`, implements ``search`` and asks for accuracy
only through ``self.oracle(problem)``; one file per strategy lives next to this one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from fairnas.arch import Arch
from fairnas.errors import ConfigError
from fairnas.search.problem import Limits, SearchProblem, is_feasible, limits_from, limits_text


class AccuracyOracle:
    """The only way a strategy gets accuracies: asks ``problem.accuracy`` once per architecture, in
    batches, refuses an architecture over the limits, and remembers the evaluation order
    (``order``) and every answer (``accuracy``)."""

    def __init__(self, problem: SearchProblem, limits: Limits) -> None:
        self.problem = problem
        self.limits = limits
        self.order: list[Arch] = []
        self.accuracy: dict[Arch, float] = {}

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        """Accuracies of ``archs``; only those not asked before go to the oracle (as one batch)."""
        new: list[Arch] = []
        for arch in dict.fromkeys(archs):  # in order, without repeats
            if arch not in self.accuracy:
                # strategies only pass feasible archs; this guards the promise to the caller
                if not is_feasible(self.problem.costs(arch), self.limits):
                    raise AssertionError(f"a strategy tried to evaluate {arch}, which violates the limits")
                new.append(arch)
        if new:
            accs = list(self.problem.accuracy(new))
            if len(accs) != len(new):
                raise ValueError(f"problem.accuracy returned {len(accs)} values for {len(new)} architectures")
            for arch, acc in zip(new, accs):
                self.accuracy[arch] = float(acc)
            self.order.extend(new)
            if self.problem.progress is not None:
                self.problem.progress(len(new))
        return [self.accuracy[a] for a in archs]


def check_count(name: str, value: int, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` for the setting ``strategy.<name>``; anything else is a ConfigError."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"strategy.{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class SearchStrategy(ABC):
    """Base class: owns the seed and the limits.

    Args:
        seed: Seed of the strategy's own generator (``np.random.default_rng(seed)``).
        max_madds: Upper bound on MAdds (cost ``"madds"``), or None for no bound.
        max_params: Upper bound on parameters (cost ``"params"``), or None.
        max_latency_ms: Upper bound on latency in ms (cost ``"latency_ms"``), or None.
    """

    def __init__(
        self,
        seed: int = 0,
        max_madds: float | None = None,
        max_params: float | None = None,
        max_latency_ms: float | None = None,
    ) -> None:
        self.seed = check_count("seed", seed, 0)
        self.limits = limits_from(max_madds, max_params, max_latency_ms)

    def oracle(self, problem: SearchProblem) -> AccuracyOracle:
        """A fresh oracle for one search of ``problem`` under this strategy's limits."""
        return AccuracyOracle(problem, self.limits)

    @abstractmethod
    def search(self, problem: SearchProblem) -> list[Arch]:
        """Search ``problem``; returns the evaluated architectures in evaluation order, no duplicates."""

    def __repr__(self) -> str:
        limits = f", limits={{{limits_text(self.limits)}}}" if self.limits else ""
        return f"{type(self).__name__}(seed={self.seed}{limits})"
