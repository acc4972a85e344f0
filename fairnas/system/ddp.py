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
    strategy: Any, accelerator: str, devices: Any, num_nodes: int = 1, find_unused_parameters: bool = True
) -> Any:
    """The strategy to hand to the Trainer.

    With more than one process and ``strategy`` 'auto' (or a plain DDP name such as 'ddp'), this is
    DDP with ``find_unused_parameters=True``: a fair step runs m backward passes through different
    paths, and only the last one (outside ``no_sync``) all-reduces every parameter that any path
    used. Default DDP refuses the second backward, and ``static_graph`` sees a changing graph.
    Other strategies (objects, or names such as 'fsdp') are passed through untouched.
    """
    name = strategy if isinstance(strategy, str) else None
    if name in _DDP_NAMES:
        return HydraDDPStrategy(find_unused_parameters=find_unused_parameters, start_method=_DDP_NAMES[name])
    if name == "auto" and count_devices(accelerator, devices) * int(num_nodes) > 1:
        return HydraDDPStrategy(find_unused_parameters=find_unused_parameters)
    return strategy


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
    """DDP whose script launcher works inside Hydra multirun sweeps (see :func:`_hydra_job_command`)."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = _HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)


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
