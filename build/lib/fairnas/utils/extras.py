"""Conveniences at the start of a run (the ``extras`` config group)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("fairnas")

# Printed first, in this order; the other top-level keys follow.
FIRST = ("search_space", "sampler", "dataset", "trainer", "system", "optimizer", "scheduler", "logger", "callbacks")


def apply_extras(cfg: DictConfig) -> None:
    """``extras.ignore_warnings``: silence Python warnings; ``extras.print_config``: print the
    composed config as a tree (rich)."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        log.info("extras.ignore_warnings: Python warnings are silenced")
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        print_config_tree(cfg)


def print_config_tree(cfg: DictConfig, first: Sequence[str] = FIRST, resolve: bool = True) -> None:
    """Prints the config as a rich tree, one branch per top-level key, each as YAML."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    keys = [k for k in first if k in cfg] + [k for k in cfg if k not in first]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=resolve) if OmegaConf.is_config(value) else str(value)
        tree.add(key).add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    rich.print(tree)
