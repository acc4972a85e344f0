"""Choosing the distributed strategy that keeps a fair step exact."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.trainer.connectors.checkpoint_connector import _CheckpointConnector

from fairnas.errors import ConfigError

# Strategy names that mean plain DDP, with the start method each implies.
_DDP_NAMES = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


def count_devices(accelerator: str, devices: Any) -> int:
    """How many devices Lightning will use per node for ``(accelerator, devices)``."""
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if text in ("auto", "-1"):
        return torch.cuda.device_count() if gpu else 1
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"trainer.devices={devices!r} is not a number, a list of ids or 'auto'") from None


def resolve_strategy(
    strategy: Any,
    accelerator: str,
    devices: Any,
    num_nodes: int = 1,
    find_unused_parameters: bool = True,
    cpu_threads: int | str | None = "auto",
) -> Any:
    """The strategy to hand to the Trainer.

    With more than one process and ``strategy`` 'auto' (or a plain DDP name such as 'ddp'), this is
    DDP with ``find_unused_parameters=True``: a fair step runs m backward passes through different
    paths, and only the last one (outside ``no_sync``) all-reduces every parameter that any path
    used. Default DDP refuses the second backward, and ``static_graph`` sees a changing graph.
    Other strategies (objects, or names such as 'fsdp') are passed through untouched.
    ``cpu_threads`` is each process's intra-op thread count (see :func:`set_cpu_threads`).
    """
    name = strategy if isinstance(strategy, str) else None
    threads = check_cpu_threads(cpu_threads)
    if name in _DDP_NAMES:
        return HydraDDPStrategy(
            find_unused_parameters=find_unused_parameters, start_method=_DDP_NAMES[name], cpu_threads=threads
        )
    if name == "auto" and count_devices(accelerator, devices) * int(num_nodes) > 1:
        return HydraDDPStrategy(find_unused_parameters=find_unused_parameters, cpu_threads=threads)
    if isinstance(threads, int):  # one process: a number is applied here, "auto" keeps torch's (and OMP_NUM_THREADS)
        torch.set_num_threads(threads)
    return strategy


def check_cpu_threads(value: int | str | None) -> int | str:
    """``cpu_threads``: a positive number, or ``auto`` (null means auto)."""
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise ConfigError(f"cpu_threads={value!r}: give a number of threads per process (1, 2, ...) or auto")
    return int(value)


def cpus_per_process(processes_on_host: int) -> int:
    """CPUs each process of the run may use: SLURM's cpus-per-task in a SLURM step (already per process),
    else this process's CPU affinity shared by the run's processes on this machine."""
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit() and int(per_task) > 0:
        return int(per_task)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // processes_on_host)


def ranks_on_this_host() -> int:
    """How many processes of the distributed run share this machine (a collective: every rank calls it).

    Counted from the ranks' host names, not from the launcher's idea of a node: two torchrun
    "nodes" on one machine share its CPUs exactly as one node with two processes does.
    """
    import socket

    names: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(names, socket.gethostname())
    return max(1, names.count(socket.gethostname()))


def set_cpu_threads(cpu_threads: int | str, processes_on_host: int) -> int:
    """Sets and returns this process's intra-op thread count under DDP.

    On the CPU, floating-point sums are split over threads, so the thread count changes the bits a
    step produces. Launchers disagree on it: Lightning's own starts ``cores / processes`` threads,
    torchrun 1 when it starts several processes per node and torch's default (every core) when it
    starts one, srun torch's default. ``auto`` replaces all of them by one rule that depends on the
    machine and on how many processes of the run share it, never on how the launcher groups them
    into nodes: the CPUs a process may use (SLURM's cpus-per-task, else its affinity) divided by
    the run's processes on this machine. A number fixes it (the same bits on machines with
    different core counts).
    """
    threads = cpus_per_process(processes_on_host) if cpu_threads == "auto" else int(cpu_threads)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # loader workers and child processes follow
    return threads


def _hydra_job_command(local_rank: int) -> tuple[list[str], str]:
    """The command that starts DDP rank ``local_rank`` of the CURRENT Hydra job, multirun included.

    Lightning's own version re-runs ``sys.argv``: inside a ``-m`` sweep every worker would then run
    the whole sweep, in the wrong directory. This one runs this job alone: its task overrides, in
    its output directory (the worker writes its log there too, and no second ``.hydra``).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    skip = ("hydra.run.", "hydra.sweep.", "hydra.mode", "hydra.job.name", "hydra.output_subdir")
    command += [o for o in hc.overrides.hydra if not o.startswith(skip)]
    command += list(hc.overrides.task)
    output_dir = hc.runtime.output_dir.replace("\\", "\\\\").replace('"', '\\"')
    command += [f'hydra.run.dir="{output_dir}"', f"hydra.job.name={hc.job.name}_ddp_rank{local_rank}",
                "hydra.output_subdir=null"]  # fmt: skip
    return command, get_original_cwd()


class _HydraJobLauncher(_SubprocessScriptLauncher):
    """Lightning's script launcher, starting the other ranks with :func:`_hydra_job_command`."""

    def _call_children_scripts(self) -> None:
        module = sys.modules[_SubprocessScriptLauncher.__module__]
        original = module._hydra_subprocess_cmd
        module._hydra_subprocess_cmd = _hydra_job_command
        try:
            super()._call_children_scripts()
        finally:
            module._hydra_subprocess_cmd = original


class HydraDDPStrategy(DDPStrategy):
    """DDP whose script launcher works inside Hydra multirun sweeps (see :func:`_hydra_job_command`),
    with each process's CPU thread count set by one rule whatever the launcher (:func:`set_cpu_threads`).
    """

    def __init__(self, *args: Any, cpu_threads: int | str = "auto", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cpu_threads = check_cpu_threads(cpu_threads)

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = _HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def setup_environment(self) -> None:
        super().setup_environment()  # joins the process group
        set_cpu_threads(self.cpu_threads, ranks_on_this_host())

    def setup_distributed(self) -> None:
        restart = _elastic_agent_store_restart()
        if restart is None:
            return super().setup_distributed()
        # Under torchrun the ranks share the elastic agent's store, which keeps its keys across restarts:
        # after an elastic restart a rank can read the address its peer had before it (gloo then refuses
        # the connection or waits forever; pytorch/pytorch#135712). Lightning's setup_distributed, with the
        # process group's keys kept apart per restart.
        from lightning_fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._process_group_backend = self._get_process_group_backend()
        os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
        agent = torch.distributed.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=self._timeout
        )
        torch.distributed.init_process_group(
            self._process_group_backend, store=torch.distributed.PrefixStore(f"fairnas/restart_{restart}", agent),
            rank=self.global_rank, world_size=self.world_size, timeout=self._timeout,
        )  # fmt: skip


def _elastic_agent_store_restart() -> int | None:
    """torchrun's restart count when the ranks use its agent's store, else None."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or torch.distributed.is_initialized():
        return None
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


# What Lightning's launcher puts into this process's environment for the ranks it starts.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def isolated_distributed_run() -> Iterator[None]:
    """Leaves no trace of a DDP run in this process: the next job of a sweep starts clean.

    Lightning sets LOCAL_RANK, WORLD_SIZE, ... in the launching process and never destroys the
    process group; the next job of a ``-m`` sweep would then believe it was started by an external
    launcher and wait forever for ranks that are gone. This undoes both after the run.
    """
    before = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cluster_plugins(plugins: Sequence[Any] = ()) -> list[Any]:
    """The cluster environment to give the Trainer: SLURM's, with Lightning's auto-requeue off.

    Lightning's requeue saves ``hpc_ckpt_<n>.ckpt`` inside the signal handler, in the middle of a
    step, and leaves it where every later ``fit``/``validate``/``test`` of the directory would load it;
    fairnas saves at a step boundary and requeues itself (``SaveOnInterrupt``, ``train.py``).
    Empty outside SLURM, under torchrun (which Lightning prefers to SLURM's environment), and when
    ``plugins`` (the Trainer's others) already hold a cluster environment.
    """
    from lightning_fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment

    if any(isinstance(p, ClusterEnvironment) for p in plugins):
        return []
    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def explicit_checkpoints_only(trainer: Any) -> None:
    """Makes ``trainer`` load only the checkpoints it is given (``ckpt_path=``), never one it finds.

    Under SLURM, Lightning's ``fit``, ``validate`` and ``test`` called without a ``ckpt_path`` load
    the newest ``hpc_ckpt_<n>.ckpt`` of the run directory when there is one: after a resume, the
    final validation of the weights just trained would silently evaluate an older state. fairnas
    chooses the checkpoint to continue itself (``ckpt_path=last`` included), so that search is
    switched off for this trainer.
    """
    connector = trainer._checkpoint_connector
    if type(connector) is _CheckpointConnector:
        connector.__class__ = _ExplicitCheckpointConnector


class _ExplicitCheckpointConnector(_CheckpointConnector):
    @property
    def _hpc_resume_path(self) -> None:
        return None
