"""`pip install .` gives a working package: dependencies, console commands and the configs inside."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

COMMANDS = {"fairnas-train", "fairnas-search", "fairnas-study", "fairnas-report", "fairnas-export", "fairnas-latency"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of this checkout (pip builds in the source folder)."""
    src = tmp_path_factory.mktemp("src") / "fairnas"
    skip = shutil.ignore_patterns(".venv", ".git", "outputs", "multirun", "build", "dist", "*.egg-info", "__pycache__",
                                  ".pytest_cache", ".ruff_cache", "docs", "benchmarks")  # fmt: skip
    shutil.copytree(ROOT, src, symlinks=True, ignore=skip)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("fairnas-*.whl")
    return built


def test_the_wheel_declares_dependencies_commands_and_ships_the_configs(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(info).decode()
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    requires = {line.split(":", 1)[1].strip().split(";")[0].split(">")[0].split("=")[0].strip()
                for line in metadata.splitlines() if line.startswith("Requires-Dist:")}  # fmt: skip
    assert {"torch", "torchvision", "pytorch-lightning", "hydra-core", "omegaconf", "torchmetrics", "pymoo"} <= requires
    assert "Provides-Extra: export" in metadata and "onnxruntime" in metadata  # pip install "fairnas[export]"
    for command in COMMANDS:
        assert f"{command} = fairnas.cli.{command.split('-')[1]}:main" in entry_points
    configs = {str(p.relative_to(ROOT)) for p in (ROOT / "conf").rglob("*.yaml")}
    assert {f"fairnas/{c}" for c in configs} <= names  # every config, the whole tree
    assert "fairnas/nas_bench/data/nas-bench-macro_cifar10.json.gz" in names
    assert "fairnas/ranking/data/fairnas_mini_fashion_mnist.csv" in names  # the monitor's built-in table


def test_a_fresh_venv_with_the_wheel_runs_the_commands(wheel, tmp_path):
    # The fresh venv reuses this venv's packages (torch, Lightning, ...) through a .pth file instead
    # of downloading them, and gets the wheel alone (--no-deps): it must find its code and configs
    # in the installed package, run from a folder that is not the checkout.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in (venv / "bin").iterdir()} >= COMMANDS
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"WANDB_MODE": "offline"}
    run = tmp_path / "run"
    proc = subprocess.run(
        [str(venv / "bin" / "fairnas-train"), "dataset=synthetic", "dataset.num_train=64", "dataset.batch_size=32",
         "trainer.max_steps=1", "trainer.limit_val_batches=1", "system.val_archs=1", "system.val_bn_batches=1",
         f"hydra.run.dir={run}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["global_step"] == 1
    where = subprocess.run([str(python), "-c", "import fairnas; print(fairnas.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert where.stdout.strip().startswith(str(site))  # the installed package ran, not the checkout
