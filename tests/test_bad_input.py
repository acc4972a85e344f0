"""Bad input at the entry points: one clear message, a non-zero exit, nothing on disk damaged.

docs/bad-inputs.md lists every case with the test that covers it; the older cases live next to
the features they guard (test_train.py, test_search.py, test_strategies.py, test_study.py).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import run_entry

FAST = ["dataset=synthetic", "dataset.batch_size=64", "trainer.max_steps=1", "trainer.limit_val_batches=1"]
ARGS = {"train.py": FAST, "search.py": [], "study.py": []}  # search.py reads the rest from the checkpoint


def assert_clean_failure(proc, message: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("overrides", "message", "code"),
    [
        # Hydra's own errors (unknown keys/options) exit with 1, ours with 2; none prints a traceback.
        (["trainer.max_stepz=1"], "Key 'max_stepz' is not in struct", 1),
        (["search_space=fairnas_huge"], "Could not find 'search_space/fairnas_huge'", 1),
        (["search_space.choices=[skip,ir_k4_e3x]"], "SearchSpaceError: ", 2),
        (["dataset.batch_size=0"], "DataError: batch_size must be >= 1, got 0", 2),
    ],
)
def test_config_mistakes(tmp_path, overrides, message, code):
    proc = run_entry("train.py", *FAST, *overrides, f"hydra.run.dir={tmp_path}")
    assert_clean_failure(proc, message, code)
    if "ir_k4_e3x" in overrides[0]:
        assert "ir_k4_e3x" in proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_an_unknown_option_lists_the_valid_ones(tmp_path):
    proc = run_entry("train.py", "search_space=fairnas_huge", f"hydra.run.dir={tmp_path}")
    assert_clean_failure(proc, "Could not find 'search_space/fairnas_huge'", code=1)
    assert "fairnas_mini" in proc.stderr and "fairnas_imagenet" in proc.stderr


@pytest.mark.parametrize("script", ["train.py", "search.py", "study.py"])
def test_an_unwritable_output_directory(tmp_path, script):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    extra = ["ckpt_path=x"] if script != "study.py" else []
    proc = run_entry(script, *ARGS[script], *extra, f"hydra.run.dir={blocker}/run")
    assert_clean_failure(proc, f"cannot write the output directory {blocker}/run (Not a directory)")
    assert blocker.read_text() == "not a directory"


def test_an_unwritable_sweep_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_entry("train.py", "-m", *FAST, "seed=0,1", f"hydra.sweep.dir={blocker}/sweep")
    assert_clean_failure(proc, "choose another with hydra.sweep.dir=<dir>")


def test_corrupt_dataset_files(tmp_path):
    data = tmp_path / "fashion"
    data.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (data / name).write_bytes(b"\x00\x00\x08\x03 truncated")
    proc = run_entry(
        "train.py", "dataset=fashion_mnist", f"dataset.data_dir={data}", "dataset.download=false",
        "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert_clean_failure(proc, "truncated header")


def _checkpoint_variants(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100)}, "fairnas": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "epoch": 3}, foreign)
    return {
        "truncated": (truncated, f"CheckpointError: cannot read checkpoint {truncated} safely ("),
        "foreign": (foreign, f"CheckpointError: {foreign} is not a fairnas checkpoint (no 'fairnas' metadata): "
                             "train it with train.py"),
    }  # fmt: skip


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["truncated", "foreign"])
@pytest.mark.parametrize("script", ["train.py", "search.py"])
def test_truncated_and_foreign_checkpoints(tmp_path, script, kind):
    path, message = _checkpoint_variants(tmp_path)[kind]
    before = path.read_bytes()
    proc = run_entry(script, *ARGS[script], f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(proc, message)
    assert path.read_bytes() == before  # the file is left as it was


@pytest.mark.parametrize("script", ["train.py", "search.py"])
def test_a_malicious_checkpoint_never_runs_code(tmp_path, script):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Evil(marker), "fairnas": {}}, f)
    proc = run_entry(script, *ARGS[script], f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(proc, f"CheckpointError: cannot read checkpoint {evil} safely (")
    assert "checkpoints that need code to load are refused" in proc.stderr
    assert not marker.exists()


def test_search_without_a_checkpoint_says_what_to_pass(tmp_path):
    proc = run_entry("search.py", f"hydra.run.dir={tmp_path}")
    assert_clean_failure(proc, "ConfigError: search.py scores architectures with a trained supernet: give its "
                               "checkpoint, ckpt_path=<train.py run dir>/checkpoints/last.ckpt")  # fmt: skip
    proc = run_entry("search.py", f"ckpt_path={tmp_path}/missing.ckpt", f"hydra.run.dir={tmp_path}")
    assert_clean_failure(proc, f"CheckpointError: checkpoint {tmp_path}/missing.ckpt does not exist: give "
                               "ckpt_path=<run dir>/checkpoints/last.ckpt")  # fmt: skip


@pytest.mark.parametrize("seed", ["-1"])  # the other values: test_check_seed, in-process
def test_a_seed_outside_the_range_is_one_clear_error(tmp_path, seed):
    proc = run_entry("train.py", *FAST, f"seed={seed}", f"hydra.run.dir={tmp_path}")
    assert_clean_failure(proc, f"seed must be a whole number in 0..4294967295 (2**32-1), got {seed}")


@pytest.mark.parametrize("check", ["true", "false"])
def test_a_truncated_image_in_an_image_folder_is_named(tmp_path, check):
    from PIL import Image

    for c, cls in enumerate(("cat", "dog")):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (12, 12), (40 * c, 20 * i, 0)).save(tmp_path / "data" / cls / f"{i}.png")
    bad = tmp_path / "data" / "dog" / "3.png"
    bad.write_bytes(bad.read_bytes()[:50])
    proc = run_entry(
        "train.py", "dataset=image_folder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=12",
        "dataset.val_size=4", "dataset.batch_size=12", "dataset.num_workers=1", "dataset.augment=null",
        f"dataset.check_images={check}", "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert_clean_failure(proc, f"image files cannot be decoded (truncated, or not images): {bad} (")


def test_check_seed():
    from fairnas.data.base import check_seed
    from fairnas.errors import ConfigError

    assert check_seed(0) == 0 and check_seed(2**32 - 1) == 2**32 - 1 and check_seed(3.0) == 3
    for bad in (-1, 2**32, 1.5, True, "x", None):
        with pytest.raises(ConfigError, match=r"dataset.seed must be a whole number in 0\.\.4294967295"):
            check_seed(bad, "dataset.seed")


def test_every_user_error_is_one_kind_the_programs_report_and_a_bug_keeps_its_traceback(capsys):
    import logging
    import subprocess
    import sys

    import fairnas.errors as errors
    from fairnas.errors import FairnasError, exit_on_user_error

    kinds = [getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)]
    assert len(kinds) == 14 and all(issubclass(kind, FairnasError) for kind in kinds)

    class UnknownPlugin(FairnasError):  # a new kind, defined anywhere: reported with nothing else to edit
        pass

    wrapped = RuntimeError("instantiating the system failed")  # as Hydra's InstantiationException wraps it
    wrapped.__cause__ = UnknownPlugin("plugin 'x' is not installed: pip install x")
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(wrapped, logging.getLogger("test"))
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: UnknownPlugin: plugin 'x' is not installed: pip install x\n"
    with pytest.raises(KeyError):  # a bug is re-raised as it is
        exit_on_user_error(KeyError("bug"), logging.getLogger("test"))
    # printing a user error never loads Lightning
    code = "import sys, fairnas.errors; print('lightning_fabric' in sys.modules or 'pytorch_lightning' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
