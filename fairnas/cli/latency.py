"""Measure a latency table on this machine, for search.py latency_table=... anywhere.

    python latency.py search_space=fairnas_mini                          # onnxruntime, CPU, 1 thread
    python latency.py search_space=nas_bench_macro runtime=torch device=cuda
    python latency.py search_space=fairnas_mini validate=50              # also check it on 50 networks

Writes latency_table.json (per-block latencies, the fit, the device, runtime, version and threads)
and, with validate=N, validation.csv (predicted against measured latency of N random networks).
See :mod:`fairnas.deploy.latency`.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from fairnas.cli import CONFIG_DIR
from fairnas.errors import ConfigError, exit_on_user_error
from fairnas.utils import write_text_atomic

log = logging.getLogger("fairnas")
TABLE_FILE = "latency_table.json"


def latency(cfg: DictConfig) -> dict:
    from fairnas.deploy.latency import build_table, make_runtime

    start = time.time()
    space = instantiate(cfg.search_space)
    for key in ("input_size", "in_channels", "num_classes"):
        value = cfg.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise ConfigError(f"{key}={value!r}: give a positive whole number or null (the space's nominal one)")
    runtime = make_runtime(cfg.runtime, cfg.device, cfg.threads, cfg.opset)
    table = build_table(
        space, runtime, cfg.input_size, cfg.in_channels, cfg.num_classes, warmup=cfg.warmup, repeats=cfg.repeats,
        rounds=cfg.rounds, fit_archs=cfg.fit_archs, seed=cfg.seed, validate=cfg.validate, progress=log.info,
    )  # fmt: skip
    out_dir = Path(cfg.paths.output_dir)
    if table.validation:
        v = table.validation
        out = io.StringIO()
        writer = csv.DictWriter(out, ["arch", "predicted_ms", "measured_ms", "sum_ms"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(v["rows"])
        write_text_atomic(out_dir / "validation.csv", out.getvalue())
    table.save(out_dir / TABLE_FILE)
    log.info("%s on %s: stem %.4f ms, head %.4f ms, blocks %.4f-%.4f ms; prediction = %.3f * sum + %.4f ms (%s)",
             space.name, table.describe(), table.stem_ms, table.head_ms, min(min(r) for r in table.layers),
             max(max(r) for r in table.layers), table.scale, table.offset_ms, table.fit["method"])  # fmt: skip
    if table.fit.get("archs"):
        log.info("fit on %d networks: median absolute error %.1f%%", table.fit["archs"], table.fit["mdape_percent"])
    if table.validation:
        v = table.validation
        log.info("validation on %d other networks (%.3f-%.3f ms, timed with the table): median absolute error %.1f%% "
                 "(goal <= 10%%), Kendall tau %.3f (goal >= 0.8); the plain sum: %.1f%%, tau %.3f", v["archs"],
                 v["measured_ms"]["min"],
                 v["measured_ms"]["max"], v["mdape_percent"], v["kendall_tau"], v["sum_only"]["mdape_percent"],
                 v["sum_only"]["kendall_tau"])  # fmt: skip
    log.info("table written to %s in %.0f s: search with it as search.py ckpt_path=... latency_table=%s",
             out_dir / TABLE_FILE, time.time() - start, out_dir / TABLE_FILE)  # fmt: skip
    return table.to_dict()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="latency")
def main(cfg: DictConfig) -> None:
    try:
        latency(cfg)
    except Exception as err:
        exit_on_user_error(err, log)


if __name__ == "__main__":
    main()
