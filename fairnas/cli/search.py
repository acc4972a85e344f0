"""Search architectures with a trained supernet as the evaluator, and export the winners.

    python search.py ckpt_path=outputs/.../checkpoints/last.ckpt                  # NSGA-II (default)
    python search.py ckpt_path=... strategy=evolution strategy.max_madds=330e6
    python search.py ckpt_path=... strategy=random strategy.num_samples=500
    python search.py ckpt_path=... devices=4                                    # 4 processes share the work
    torchrun --nproc_per_node=4 search.py ckpt_path=...                         # or srun --ntasks-per-node=4

Writes evaluated.csv, pareto.csv, pareto.png, best.yaml (each with the command that retrains it
from scratch), evaluations.jsonl (the resumable cache) and results.json to the run directory.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from fairnas.cli import CONFIG_DIR
from fairnas.errors import ConfigError, exit_on_user_error
from fairnas.models import CostModel
from fairnas.run.checkpoint import file_digest, load_supernet
from fairnas.run.record import RunRecord, select_overrides
from fairnas.search import DeviceBatches, ResultCache, SearchProblem, SupernetEvaluator
from fairnas.search.outputs import best_of, records_csv, with_named, write_outputs
from fairnas.search.spread import Spread, launcher_world
from fairnas.system.ddp import check_cpu_threads
from fairnas.tracking import finish_loggers, log_file_artifact, redact, run_identity, supernet_run_info
from fairnas.utils import write_json_atomic

log = logging.getLogger("fairnas")


def search(cfg: DictConfig) -> dict[str, Any]:
    start = time.time()
    out_dir = Path(cfg.paths.output_dir)
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError(
            "search.py scores architectures with a trained supernet: give its checkpoint, "
            "ckpt_path=<train.py run dir>/checkpoints/last.ckpt"
        )
    spread, device = _launch(cfg)
    allow_blocks = list(cfg.get("allow_blocks") or [])
    supernet, record = load_supernet(cfg.ckpt_path, allow_blocks)
    supernet.to(device)
    space = supernet.space
    ev = cfg.evaluator
    if cfg.get("dataset") is not None:  # dataset=<name> on the command line: the user's own config
        with open_dict(cfg):
            cfg.search_space = record.space_shape(allow_blocks)  # for ${search_space.*} in dataset configs
            if not select_overrides(HydraConfig.get().overrides.task, ["dataset.seed"]):
                cfg.dataset.seed = record.seed  # the split the supernet was trained with, not the strategy seed
        dataset_info = OmegaConf.to_container(cfg.dataset, resolve=True)
        dataset_info["eval_batch_size"] = ev.batch_size
        datamodule = instantiate(dataset_info)
    else:  # the checkpoint's dataset, by name from fairnas's registry (or allow_datasets), never a _target_
        allow = list(cfg.get("allow_datasets") or [])
        dataset_info = record.data.config(allow, eval_batch_size=ev.batch_size)
        datamodule = record.data.build(allow, eval_batch_size=ev.batch_size)
    if (datamodule.num_classes, datamodule.in_channels) != (record.num_classes, record.in_channels):
        raise ConfigError(
            f"the dataset has {datamodule.num_classes} classes and {datamodule.in_channels} channels but the "
            f"supernet was trained for {record.num_classes} and {record.in_channels}: search it on data of that shape"
        )
    datamodule.setup("fit")
    calibration = DeviceBatches(
        datamodule.calibration_dataloader(ev.bn_batches, seed=ev.calibration_seed), None, device, ev.preload
    )
    validation = DeviceBatches(datamodule.val_dataloader(), ev.val_batches, device, ev.preload)
    cost_model = CostModel.create(space, datamodule.image_size, datamodule.num_classes, datamodule.in_channels)
    latency_table = _latency_table(cfg, space, datamodule)
    fingerprint = {
        "checkpoint": file_digest(cfg.ckpt_path),
        "dataset": dataset_info,
        "bn_batches": ev.bn_batches,
        "calibration_seed": ev.calibration_seed,
        "val_batches": ev.val_batches,
        "latency": [device.type, ev.latency_repeats, ev.memory_format] if ev.latency else None,
    }
    # Rank 0 alone reads and writes the cache file; the other processes hold a copy of what it read.
    opened: list[ResultCache] = []

    def open_cache() -> list[dict[str, Any]]:
        opened.append(ResultCache(out_dir / "evaluations.jsonl", fingerprint))
        return opened[0].records()

    cached = spread.agree(open_cache)  # a refused cache is one error on every process
    cache = opened[0] if spread.is_main else ResultCache.holding(cached)
    if len(cache):
        log.info("resuming: %d architectures already evaluated in %s", len(cache), out_dir / "evaluations.jsonl")
    evaluator = SupernetEvaluator(
        supernet, calibration, validation, cost_model, cache, latency=ev.latency, latency_repeats=ev.latency_repeats,
        input_size=datamodule.image_size, memory_format=ev.memory_format, spread=spread,
        latency_model=None if latency_table is None else latency_table.predictor(space),
    )  # fmt: skip
    if latency_table is not None and "objectives" in cfg.strategy and "latency_ms" not in cfg.strategy.objectives:
        with open_dict(cfg):
            cfg.strategy.objectives = [*cfg.strategy.objectives, "latency_ms"]  # the table's point: optimise it
        log.info("objectives: %s (latency_ms from the latency table)", list(cfg.strategy.objectives))
    strategy = instantiate(cfg.strategy)
    log.info("searching %s (%d layers x %d choices) with %r on %d process(es)", space.name, space.num_layers,
             space.num_choices, strategy, spread.world_size)  # fmt: skip
    with tqdm(desc="evaluating", unit="arch", dynamic_ncols=True, disable=not spread.is_main) as bar:
        problem = SearchProblem(
            space.num_layers, space.num_choices, evaluator.costs, _progress(evaluator, bar), progress=None
        )
        archs = strategy.search(problem)
    evaluator.results(list(space.archs.values()))  # the named models the strategy did not propose: spread too
    searched = [{**evaluator.result(a), "blocks": " ".join(space.describe_arch(a))} for a in archs]
    named = {n: {**evaluator.result(a), "blocks": " ".join(space.describe_arch(a))} for n, a in space.archs.items()}
    records = with_named(searched, named)  # the front and the best pick cover the named models too

    retrain = " ".join(["python train.py", *(shlex.quote(o) for o in _retrain_args(cfg, record))])
    limits = {k: strategy_limit(cfg.strategy, k) for k in ("max_madds", "max_params", "max_latency_ms")}
    objectives = list(cfg.strategy.get("objectives", ["madds"]))
    if latency_table is not None and "latency_ms" not in objectives:  # the front of any strategy weighs latency too
        objectives.append("latency_ms")
    best = best_of(records, limits)
    if best is None:
        raise ConfigError(f"no evaluated architecture is within the limits {limits}: relax strategy.max_*")
    if not spread.is_main:  # every process holds the same records; rank 0 writes them
        return {"search/best_arch": best["arch"], "search/best_acc1": best["acc1"], "rank": spread.rank}
    latency_source = _latency_source(cfg, latency_table, device)
    front, figure = write_outputs(out_dir, records, objectives, limits, retrain, named, f"{space.name}: {strategy!r}",
                                  latency_source)  # fmt: skip
    results = {
        "strategy": type(strategy).__name__,
        "seed": cfg.seed,
        "search_space": space.name,
        "num_evaluated": len(records),
        "num_searched": len(searched),  # proposed by the strategy; the rest are named models of the space
        "new_evaluations": evaluator.evaluations,
        "front_size": len(front),
        "search/best_acc1": best["acc1"],
        "search/best_arch": best["arch"],
        "search/best_madds": best["madds"],
        "named": {k: {"arch": v["arch"], "acc1": v["acc1"], "madds": v["madds"]} for k, v in named.items()},
        "latency": latency_source,
        "processes": spread.world_size,
        "wall_time_s": round(time.time() - start, 2),
    }
    write_json_atomic(out_dir / "results.json", results)
    _log_to_loggers(cfg, records, figure, results, out_dir)
    added = [r["name"] for r in records[len(searched) :]]
    log.info("%d architectures: %d from the strategy + %d named models of the space not among them (%s); %d "
             "evaluated now, %d read from the cache; best %s acc %.4f; outputs in %s", len(records), len(searched),
             len(added), ", ".join(added) or "none", evaluator.evaluations, len(records) - evaluator.evaluations,
             best["arch"], best["acc1"], out_dir)  # fmt: skip
    return results


def _latency_table(cfg: DictConfig, space: Any, datamodule: Any) -> Any:
    """The latency table given as ``latency_table=...``, checked to be of this space and input; None without one."""
    path = cfg.get("latency_table")
    if path is None:
        return None
    if cfg.evaluator.latency:
        raise ConfigError(
            f"latency_table={path} predicts latency and evaluator.latency=true measures it here: give one of them"
        )
    from fairnas.deploy.latency import LatencyTable

    table = LatencyTable.load(path)
    table.check_matches(space, datamodule.image_size, datamodule.in_channels, datamodule.num_classes,
                        where=f"latency table {path}")  # fmt: skip
    log.info("latency_ms predicted by %s: %s, measured %s", path, table.describe(), table.created)
    return table


def _latency_source(cfg: DictConfig, table: Any, device: torch.device) -> dict[str, Any] | None:
    """Where the outputs' latency_ms comes from (results.json, best.yaml, pareto.png)."""
    if table is not None:
        return {"source": "latency table", "file": str(cfg.latency_table), "runtime": f"{table.runtime} "
                f"{table.runtime_version}", "device": table.device.get("name"), "threads": table.threads,
                "predicted": f"{table.scale:.4g} * block sum {'-' if table.offset_ms < 0 else '+'} "
                f"{abs(table.offset_ms):.4g} ms"}  # fmt: skip
    if cfg.evaluator.latency:
        return {"source": "measured here", "runtime": f"torch {torch.__version__}", "device": device.type,
                "threads": torch.get_num_threads()}  # fmt: skip
    return None


def _retrain_args(cfg: DictConfig, record: RunRecord) -> list[str]:
    """The overrides that trained the supernet's data, or those of a dataset chosen for the search."""
    if cfg.get("dataset") is None:
        return record.retrain_args()
    hc = HydraConfig.get()
    return record.retrain_args(hc.runtime.choices["dataset"], hc.overrides.task)


def _launch(cfg: DictConfig) -> tuple[Spread, torch.device]:
    """The processes of this search and this one's device. ``devices`` x ``num_nodes`` > 1: Lightning Fabric
    starts the other processes of this node (or joins those torchrun or srun started) and this one takes its
    device; otherwise this process searches alone on ``device``."""
    threads = check_cpu_threads(cfg.get("cpu_threads"))
    if threads != "auto":  # before any process starts: the ones Fabric starts inherit it
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    launched = launcher_world()
    devices, nodes = (1 if cfg.get(k) is None else int(cfg.get(k)) for k in ("devices", "num_nodes"))
    if launched is not None and cfg.get("devices") is None:
        devices, nodes = launched  # torchrun --nproc_per_node=N, srun --ntasks=N: as many processes as started
    if devices < 1 or nodes < 1:
        raise ConfigError(f"devices={devices}, num_nodes={nodes}: give processes per node and nodes, each 1 or more")
    if launched is not None and launched != (devices, nodes):
        raise ConfigError(
            f"this search was started as {launched[0]} process(es) on each of {launched[1]} node(s), but devices="
            f"{devices} num_nodes={nodes}: give the numbers the launcher started (or leave devices unset)"
        )
    if devices * nodes == 1:
        return Spread(), _device(cfg.device)
    if launched is None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            f"devices={devices} in a -m sweep: the processes Fabric starts would each run the whole sweep again. "
            "Run the sweep's searches one by one, or under torchrun or srun (devices unset)"
        )
    from lightning_fabric import Fabric

    accelerator = _device(cfg.device).type  # cpu or cuda, checked as for one process
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=nodes, strategy="ddp")
    fabric.launch()
    return Spread.over_process_group(), fabric.device


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available here: use device=cpu or device=auto")
    return torch.device(name)


def strategy_limit(strategy_cfg: DictConfig, key: str) -> float | None:
    value = strategy_cfg.get(key)
    return None if value is None else float(value)


def _progress(evaluator: SupernetEvaluator, bar: tqdm):
    """Wraps the evaluator's accuracy so the bar moves by the architectures evaluated anew."""

    def accuracy(archs):
        before = evaluator.evaluations
        out = evaluator.accuracy(archs)
        bar.set_postfix(cached=len(evaluator.cache), refresh=False)
        bar.update(evaluator.evaluations - before)
        return out

    return accuracy


def _log_to_loggers(cfg: DictConfig, records: list[dict[str, Any]], figure: Any, results: dict[str, Any],
                    out_dir: Path) -> None:  # fmt: skip
    """One run per logger: the search config with the supernet run it searched, summary metrics,
    the evaluated table and Pareto plot, and (W&B) best.yaml and pareto.csv as an artifact."""
    if not cfg.get("logger"):
        return
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    supernet = supernet_run_info(cfg.ckpt_path)
    identity = run_identity(
        {"sampler": "search", "search_space": results["search_space"], "dataset": supernet.get("dataset", "data")},
        cfg.seed, name=cfg.get("name") or f"search-{supernet.get('run_name') or Path(cfg.ckpt_path).stem}",
        group=cfg.get("group") or supernet.get("group"), tags=cfg.get("tags") or [],
    )  # fmt: skip
    with open_dict(cfg):
        cfg.name, cfg.group, cfg.tags = identity.name, identity.group, identity.tags
    config = {**redact(OmegaConf.to_container(cfg, resolve=True)), "supernet": supernet}
    summary = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    loggers = []
    try:
        for logger_cfg in cfg.logger.values():
            extra = {"job_type": "search"} if str(logger_cfg.get("_target_", "")).endswith("WandbLogger") else {}
            logger = instantiate(logger_cfg, **extra)
            loggers.append(logger)
            logger.log_hyperparams(config)
            logger.log_metrics(summary, step=0)
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("search/pareto", figure)
                logger.experiment.add_text("search/evaluated", "    " + records_csv(records).replace("\n", "\n    "))
            elif isinstance(logger, WandbLogger):
                import wandb

                columns = sorted({k for r in records for k in r})
                table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in records])
                logger.experiment.log({"search/evaluated": table, "search/pareto": wandb.Image(figure)})
                logger.experiment.summary.update(summary)
                files = [out_dir / n for n in ("best.yaml", "pareto.csv", "evaluated.csv", "results.json")]
                log_file_artifact(logger, f"search-{logger.experiment.id}", "search-results", files)
        status = "success"
    except BaseException:
        status = "failed"
        raise
    finally:
        finish_loggers(loggers, status)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="search")
def main(cfg: DictConfig) -> None:
    try:
        search(cfg)
    except Exception as err:
        exit_on_user_error(err, log)


if __name__ == "__main__":
    main()
