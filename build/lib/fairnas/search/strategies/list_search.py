"""Evaluating a given list of architectures (e.g. a ranking study's ``archs.txt``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fairnas.arch import Arch, format_arch
from fairnas.errors import ConfigError
from fairnas.search.problem import SearchProblem, is_feasible, limits_text
from fairnas.search.strategies.base import SearchStrategy, check_count


class ListSearch(SearchStrategy):
    """Evaluates exactly the given architectures, in order (e.g. a ranking study's ``archs.txt``).

    Args:
        archs: Architectures as index lists or '-'-joined index strings ("5-3-3-1-0-0-2-4").
        path: A file of architectures, one per line ('#' comments allowed), evaluated after ``archs``.
        batch_size: Architectures per ``accuracy`` call, so progress shows.
    """

    def __init__(
        self,
        archs: Sequence[Sequence[int] | str] = (),
        path: str | None = None,
        batch_size: int = 50,
        max_madds: float | None = None,
        max_params: float | None = None,
        max_latency_ms: float | None = None,
    ) -> None:
        super().__init__(0, max_madds, max_params, max_latency_ms)
        self.batch_size = check_count("batch_size", batch_size, 1)
        self.path = path
        lines = [(f"strategy.archs[{i}]", a) for i, a in enumerate(archs)]
        if path is not None:
            try:
                text = Path(path).expanduser().read_text()
            except OSError as e:
                raise ConfigError(f"strategy.path: cannot read {path}: {e.strerror or e}") from None
            for number, line in enumerate(text.splitlines(), start=1):
                entry = line.split("#", 1)[0].strip()
                if entry:
                    lines.append((f"{path}:{number}", entry))
        if not lines:
            raise ConfigError("strategy=list needs architectures: strategy.path=<file> or strategy.archs=[...]")
        self.archs = [self._parse(where, a) for where, a in lines]

    @staticmethod
    def _parse(where: str, arch: Sequence[int] | str) -> Arch:
        parts = arch.split("-") if isinstance(arch, str) else list(arch)
        try:
            return tuple(int(p) for p in parts)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: {arch!r} is not an architecture of choice indices like 5-3-3-1-0-0-2-4"
            ) from None

    def search(self, problem: SearchProblem) -> list[Arch]:
        for arch in self.archs:
            if len(arch) != problem.num_layers or not all(0 <= c < problem.num_choices for c in arch):
                raise ConfigError(
                    f"strategy=list: {format_arch(arch)} is not an architecture of this space "
                    f"({problem.num_layers} layers, choices 0..{problem.num_choices - 1})"
                )
        unique = list(dict.fromkeys(self.archs))
        costs = {a: problem.costs(a) for a in unique}
        archs = [a for a in unique if is_feasible(costs[a], self.limits)]
        if not archs:
            smallest = {k: min(c[k] for c in costs.values()) for k in sorted({k for c in costs.values() for k in c})}
            raise ConfigError(
                f"strategy=list: none of the {len(unique)} architectures is within the limits "
                f"({limits_text(self.limits)}; the smallest costs "
                f"among them: {', '.join(f'{k} {v:g}' for k, v in smallest.items())}): raise the limits or list "
                "other architectures"
            )
        evaluate = self.oracle(problem)
        for start in range(0, len(archs), self.batch_size):
            evaluate(archs[start : start + self.batch_size])
        return evaluate.order

    def __repr__(self) -> str:
        source = f"path={self.path!r}, " if self.path else ""
        return f"ListSearch({source}{len(self.archs)} architectures)"
