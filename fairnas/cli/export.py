"""Export a network to deployment formats, each checked against PyTorch before it is kept.

    python export.py ckpt_path=outputs/retrain/checkpoints/last.ckpt                  # a train.py arch=... run
    python export.py ckpt_path=outputs/supernet/checkpoints/last.ckpt arch=3-1-4-...  # a supernet path
    python export.py ckpt_path=... formats=[onnx] opset=17

Writes model.onnx (onnxruntime checks it) and model.pt2 (a torch.export program) to the run
directory, with export_check.json: the network, the check batches, the tolerance and the measured
differences. A failed export or check writes nothing. See :mod:`fairnas.deploy.export`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fairnas.cli import CONFIG_DIR
from fairnas.errors import ConfigError, exit_on_user_error
from fairnas.run.record import to_plain

log = logging.getLogger("fairnas")


def export(cfg: DictConfig) -> dict:
    from fairnas.deploy.export import export_network
    from fairnas.deploy.network import network_from_checkpoint

    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError(
            "export.py exports a trained network: give its checkpoint, ckpt_path=<train.py arch=... run dir>/"
            "checkpoints/last.ckpt (or a supernet's, with arch=...)"
        )
    deployable = network_from_checkpoint(
        cfg.ckpt_path, to_plain(cfg.arch), bn_batches=cfg.bn_batches, calibration_seed=cfg.calibration_seed,
        allow_datasets=list(cfg.allow_datasets or []), input_size=cfg.input_size,
        allow_blocks=list(cfg.allow_blocks or []),
    )  # fmt: skip
    out_dir = Path(cfg.paths.output_dir)
    report = export_network(
        deployable, out_dir, formats=list(cfg.formats), opset=cfg.opset, check_batch=cfg.check.batch_size,
        check_seed=cfg.check.seed, rtol=cfg.check.rtol, atol=cfg.check.atol,
    )  # fmt: skip
    net = report["network"]
    log.info("%s %s (%s, %s weights), input %s", net["search_space"], net["arch"], net["blocks"], net["source"],
             "x".join(map(str, deployable.input_shape)))  # fmt: skip
    for fmt, c in report["formats"].items():
        log.info("%-5s %s: max |difference| to PyTorch %.3g (allowed %.3g), classes agree %.0f%% -> passed, %s",
                 fmt, out_dir / c["file"], c["max_abs_diff"], c["allowed_abs_diff"], 100 * c["top1_agreement"],
                 c["runtime"])  # fmt: skip
    log.info("check saved to %s", out_dir / "export_check.json")
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        export(cfg)
    except Exception as err:
        exit_on_user_error(err, log)


if __name__ == "__main__":
    main()
