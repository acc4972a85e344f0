"""``hydra/launcher=slurm``: the submitit SLURM launcher, with sbatch's refusals as one clear message.

Hydra imports every module of ``hydra_plugins`` when it starts, so this one stays cheap and works
without the optional SLURM packages (the class exists only where hydra-submitit-launcher does).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from fairnas.utils.slurm import first_set, gpus_per_node

log = logging.getLogger("fairnas")

# gpus_per_node in conf/hydra/launcher/slurm.yaml: ${fairnas.slurm_gpus:<accelerator>,<devices>}
if not OmegaConf.has_resolver("fairnas.slurm_gpus"):
    OmegaConf.register_new_resolver("fairnas.slurm_gpus", gpus_per_node)
# tasks and nodes: train.py's trainer.devices / num_nodes, else search.py's devices / num_nodes, else 1
if not OmegaConf.has_resolver("fairnas.first_set"):
    OmegaConf.register_new_resolver("fairnas.first_set", first_set)

# What sbatch says, and the settings that decide it.
_GPUS = "gpus_per_node (GPUs: trainer.accelerator=cpu asks for none; or hydra.launcher.gpus_per_node=null)"
_REFUSALS = {
    "generic resource": _GPUS,
    "gres": _GPUS,
    "partition": "partition (hydra.launcher.partition=<one that sinfo lists>)",
    "account": "account (hydra.launcher.account=<yours>)",
    "qos": "qos (hydra.launcher.qos=...)",
    "time limit": "timeout_min (hydra.launcher.timeout_min=<at most the partition's limit>)",
    "node configuration is not available": (
        "the resources per node: cpus_per_task, tasks_per_node (= trainer.devices), gpus_per_node, mem_gb, nodes "
        "(= trainer.num_nodes); sinfo -N -l shows what the nodes have"
    ),
    "memory": "mem_gb (hydra.launcher.mem_gb=...)",
}
_SHOWN = ("partition", "account", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb",
          "timeout_min", "signal_delay_s")  # fmt: skip

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
except ImportError:  # pip install ".[slurm]" brings it
    _SubmititSlurmLauncher = None


def refusal_message(error: str, params: dict[str, Any]) -> str:
    """What sbatch refused, what was asked for, and which setting to change."""
    said = error.strip().splitlines()[-1] if error.strip() else "(no message)"
    lowered = said.lower()
    hints = list(dict.fromkeys(v for k, v in _REFUSALS.items() if k in lowered))
    asked = ", ".join(f"{k}={params.get(k)}" for k in _SHOWN if k in params)
    fix = f"change {' or '.join(hints)}" if hints else "change the hydra.launcher.* settings it names"
    return f"SLURM refused the job: {said}\n  asked for: {asked}\n  to fix: {fix}"


if _SubmititSlurmLauncher is not None:

    class SlurmLauncher(_SubmititSlurmLauncher):
        """The submitit SLURM launcher; a job sbatch refuses ends the program with one message (exit 2)."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            from submitit.core.utils import FailedJobError

            try:
                return super().launch(job_overrides, initial_job_idx)
            except FailedJobError as error:
                if "sbatch" not in str(error):
                    raise
                log.error(refusal_message(str(error), self.params))
                raise SystemExit(2) from None
