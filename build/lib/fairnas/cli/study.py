"""Run a ranking study: does the supernet rank architectures as stand-alone training does?

python study.py parallel=2 threads_per_job=1                     # the whole study (docs/ranking-study.md)
python study.py stages=[sample,ground_truth,ceiling]             # the stand-alone ground truth and its ceiling first
python study.py stages=[report]                                  # the report from finished runs

Resumable: finished runs (results.json) are skipped, interrupted ones resume from last.ckpt.
"""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from fairnas.cli import CONFIG_DIR
from fairnas.errors import exit_on_user_error
from fairnas.study import STAGES, JobFailed

log = logging.getLogger("fairnas")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="study")
def main(cfg: DictConfig) -> None:
    try:
        space = instantiate(cfg.search_space)
        # partial: the space object is passed as it is (_convert_ would turn a dataclass into a dict).
        study = instantiate(cfg.study, _partial_=True)(
            space=space,
            parallel=cfg.parallel,
            threads_per_job=cfg.threads_per_job,
            launcher=cfg.launcher,
            launcher_overrides=list(cfg.launcher_overrides),
        )
        stages = list(STAGES) if cfg.stages == "all" else [str(s) for s in cfg.stages]
        study.run(stages)
    except JobFailed as failed:
        log.error("%s", failed)
        raise SystemExit(1) from None
    except Exception as err:  # noqa: BLE001 - bad input ends in one message, anything else re-raises
        exit_on_user_error(err, log)


if __name__ == "__main__":
    main()
