"""Spreading a search's evaluations over processes (devices, nodes), with the results of one process.

Every process runs the same search: the same strategy with the same seed, the same calibration and
validation batches. When the strategy asks for architectures not evaluated yet, :meth:`Spread.share`
gives each process every ``world_size``-th of them (a fixed split of the strategy's own order), each
process evaluates its share, and :meth:`Spread.gather` hands every process all the results in that
order. The accuracy of an architecture does not depend on which process measured it, nor on the
others measured with it (:meth:`~fairnas.search.evaluator.SupernetEvaluator.evaluate_many` equals the
one-path reference bit for bit), so every process holds exactly what one process would, and the
strategy advances identically everywhere. Only the main process (rank 0) writes files.

A measurement that differs between processes (latency: a clock) is taken on rank 0 and broadcast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fairnas.errors import ConfigError, LostProcessError

T = TypeVar("T")

__all__ = ["Spread", "launcher_world"]


class Spread:
    """Which share of the work this process does, and how the shares come together.

    Args:
        rank: This process's global rank.
        world_size: The number of processes.
        all_gather: ``all_gather(obj) -> [obj of rank 0, obj of rank 1, ...]`` (a collective every rank calls).
        broadcast: ``broadcast(obj) -> rank 0's obj`` (a collective every rank calls).
    """

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        all_gather: Callable[[Any], list[Any]] | None = None,
        broadcast: Callable[[Any], Any] | None = None,
    ) -> None:
        if world_size > 1 and (all_gather is None or broadcast is None):
            raise ValueError("a spread over several processes needs all_gather and broadcast")
        self.rank, self.world_size = int(rank), int(world_size)
        self._all_gather = all_gather or (lambda obj: [obj])
        self._broadcast = broadcast or (lambda obj: obj)

    @classmethod
    def over_process_group(cls) -> Spread:
        """The spread over the processes of torch.distributed's default group (initialised by Lightning
        Fabric), talking over a gloo group of their own: on CPU memory, and a process that dies is an error
        at once (NCCL, the GPUs' default, would wait for its timeout)."""
        import torch.distributed as dist

        world = dist.get_world_size()
        group = dist.new_group(backend="gloo")  # every rank calls this, once

        def all_gather(obj: Any) -> list[Any]:
            out: list[Any] = [None] * world
            dist.all_gather_object(out, obj, group=group)
            return out

        def broadcast(obj: Any) -> Any:
            box = [obj]
            dist.broadcast_object_list(box, src=0, group=group)
            return box[0]

        return cls(dist.get_rank(), world, all_gather, broadcast)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the outputs (rank 0)."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items``: every ``world_size``-th one, from its rank on."""
        return list(items[self.rank :: self.world_size])

    def gather(self, mine: Sequence[T], total: int) -> list[T]:
        """Every process's share put back in the order of the ``total`` items :meth:`share` split."""
        if self.world_size == 1:
            return list(mine)
        parts = self._collective(self._all_gather, list(mine))
        return [parts[i % self.world_size][i // self.world_size] for i in range(total)]

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process."""
        return self._collective(self._broadcast, obj) if self.world_size > 1 else obj

    def _collective(self, call: Callable[[Any], Any], obj: Any) -> Any:
        try:
            return call(obj)
        except RuntimeError as error:  # gloo and NCCL report a peer that went away as a RuntimeError
            raise LostProcessError(
                f"rank {self.rank} of {self.world_size}: another process of this search ended while this one "
                f"waited for it ({str(error).splitlines()[0][:160]}). Every result it finished is in the "
                "evaluation cache: run the same command again to continue from it."
            ) from None

    def agree(self, action: Callable[[], T]) -> T:
        """Runs ``action`` on rank 0 and gives its result to every process; an exception it raises is
        raised on every process (so no rank waits forever for one that failed)."""
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, action())
            except Exception as error:  # noqa: BLE001 - re-raised on every rank below
                outcome = (False, error)
        ok, value = self.broadcast(outcome)
        if not ok:
            raise value
        return value

    def __repr__(self) -> str:
        return f"Spread(rank={self.rank}, world_size={self.world_size})"


def launcher_world() -> tuple[int, int] | None:
    """``(processes per node, nodes)`` when this process was started by torchrun or as one of several
    ``srun`` tasks, else None."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1")) > 1:
        local, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
        return local, world // local
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        if "SLURM_NTASKS_PER_NODE" not in env:  # what Lightning reads to place the processes
            raise ConfigError(
                f"srun started {env['SLURM_NTASKS']} tasks with --ntasks: give the tasks per node instead "
                f"(srun --nodes=<nodes> --ntasks-per-node=<tasks per node>)"
            )
        world = int(env["SLURM_NTASKS"])
        nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1")))
        return world // nodes, nodes
    return None
