"""Clusters for real: a SLURM scheduler on this machine (tests/slurm_cluster.py), and torchrun.

Every test here goes through the real engine a user meets: sbatch through the Hydra submitit
launcher, srun tasks, scancel's signals and a real time limit, torchrun with two "nodes" on
127.0.0.1 and an elastic restart. The SLURM tests skip, saying why, where the cluster cannot run
(not root, no apt); the torchrun tests run everywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import COMMON, ROOT, assert_same_training, ckpt, results, run_entry, start_entry
from slurm_cluster import ClusterUnavailable, LocalSlurm, free_port

# 8x8 synthetic images, 4 steps an epoch in one process (2 a rank with 2), 2 epochs; augmentation
# and dropout on. Checkpoints are compared bit for bit, results.json and block_usage.csv as written.
RUN = [*COMMON, "trainer.accelerator=cpu"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1"]
LAST = Path("checkpoints") / "last.ckpt"
SAME_RESULTS = ("val/acc_mean", "val/acc_min", "val/loss_mean", "train/loss", "global_step", "epoch",
                "fairness_spread", "world_size", "cpu_threads")  # fmt: skip


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> LocalSlurm:
    """A one-node SLURM cluster of this machine's own, for this test process (xdist worker)."""
    try:
        cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    except ClusterUnavailable as why:
        pytest.skip(f"no local SLURM cluster: {why}")
    yield cluster
    cluster.stop()


def slurm_env(cluster: LocalSlurm) -> dict[str, str]:
    # The jobs import the test callbacks (tests/cluster_callbacks.py); sbatch passes the environment on.
    return {**cluster.env(), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}


def scontrol_job(cluster: LocalSlurm, job: str) -> str:
    env = {**os.environ, **cluster.env()}
    return subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout


def submitted_job(sweep: Path) -> str:
    """The SLURM id of the sweep's only job (submitit names its files after it: <array>_<task>_...)."""
    files = sorted((sweep / ".submitit").glob("*/*_submitted.pkl"))
    assert len(files) == 1, files
    return files[0].parent.name


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def same_run(reference: Path, run: Path) -> None:
    """The same training state, results and block usage as the reference run."""
    assert_same_training(reference / LAST, run / LAST)
    expected, got = results(reference), results(run)
    assert {k: got[k] for k in SAME_RESULTS} == {k: expected[k] for k in SAME_RESULTS}
    assert (run / "block_usage.csv").read_text() == (reference / "block_usage.csv").read_text()


# ----------------------------------------------------------------- sbatch
def test_a_cpu_sweep_needs_no_gpu_setting_and_equals_the_basic_launchers(slurm, tmp_path):
    sweep = [*RUN, "sampler=sf,ef", "trainer.max_steps=3"]
    done = run_entry("train.py", "-m", *SLURM, *sweep, f"hydra.sweep.dir={tmp_path / 'slurm'}", env=slurm_env(slurm))
    assert done.returncode == 0, done.stderr[-3000:]
    local = run_entry("train.py", "-m", *sweep, f"hydra.sweep.dir={tmp_path / 'local'}")
    assert local.returncode == 0, local.stderr[-3000:]
    for job in "01":
        same_run(tmp_path / "local" / job, tmp_path / "slurm" / job)
    script = next((tmp_path / "slurm" / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "--gpus-per-node" not in script and "--signal=USR2@120" in script and "--requeue" in script


@pytest.mark.parametrize(
    "override, setting",
    [
        ("trainer.accelerator=gpu", "gpus_per_node"),  # a GPU run on a partition without GPUs
        ("hydra.launcher.mem_gb=100000", "mem_gb"),
        ("hydra.launcher.partition=nowhere", "hydra.launcher.partition="),
    ],
)
def test_a_job_that_sbatch_refuses_is_one_message_naming_the_setting(slurm, tmp_path, override, setting):
    done = run_entry("train.py", "-m", *SLURM, *RUN, override, f"hydra.sweep.dir={tmp_path}", env=slurm_env(slurm))
    said = done.stdout + done.stderr
    assert done.returncode == 2, said[-3000:]
    assert "SLURM refused the job: sbatch: error:" in said and "Traceback" not in said
    fix = next(line for line in said.splitlines() if "to fix:" in line)
    assert setting in fix


# ----------------------------------------------------------------- pre-emption and time limits
@pytest.mark.parametrize(
    "tasks, how",
    [
        pytest.param(2, "scancel", id="2-srun-tasks-scancel-USR2"),
        # SLURM's own timer sends the signal 30-60 s into the job: 1.5 min, in make test-slow; the 2-task scancel
        # above runs the same protocol on 2 ranks in the suite.
        pytest.param(2, "time-limit", id="2-srun-tasks-time-limit", marks=pytest.mark.slow),
    ],
)
def test_a_preempted_job_saves_requeues_once_and_ends_as_the_uninterrupted_job(slurm, tmp_path, tasks, how):
    """SLURM's warning signal (USR2, what the launcher asks for with --signal) mid-training: the job
    saves at a step boundary, requeues itself once, and the requeued job (ckpt_path=last) ends with the
    weights, results and block usage of a job never interrupted, on one process and on 2 srun tasks."""
    run = [*RUN, "trainer.max_epochs=3", f"trainer.devices={tasks}"]
    reference = run_entry("train.py", *run, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-3000:]

    # The job waits after step 2 until the signal has come, wherever the scheduler's clock puts it.
    wait = ["+callbacks.wait._target_=cluster_callbacks.WaitForRequeueSignal", "+callbacks.wait.step=2"]
    # A time limit of 2 minutes, warned 60 s ahead. SLURM checks its timers every 30 s and warns up to 30 s
    # early, so USR2 comes 30-60 s into each run: in the first one while it waits, never in the short second.
    limit = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60"] if how == "time-limit" else []
    sweep = tmp_path / "sweep"
    submitter = start_entry(
        "train.py", "-m", *SLURM, *limit, *run, "ckpt_path=last", *wait, f"hydra.sweep.dir={sweep}",
        env=slurm_env(slurm),
    )  # fmt: skip
    job_dir = sweep / "0"
    wait_for(lambda: (job_dir / "at_step_2").exists() or submitter.poll() is not None, 120, "step 2")
    job = submitted_job(sweep)
    if how == "scancel":
        env = {**os.environ, **slurm.env()}
        subprocess.run(["scancel", "--signal=USR2", job], env=env, check=True)
    out, err = submitter.communicate(timeout=300)
    assert submitter.returncode == 0, (out + (err or ""))[-3000:]

    log = (job_dir / "train.log").read_text()
    requeues = log.count("requeued SLURM job")  # rank 0 requeues; every rank logs the signal
    restarts = int(re.search(r"\bRestarts=(\d+)", scontrol_job(slurm, job)).group(1))
    signalled = log.count("time limit or pre-emption ahead") // tasks  # every rank logs the signal it got
    # One requeue per signal: scancel signals once; SLURM's timer signals each run of the job that is still
    # running 30-60 s after its start (a requeued run on a very busy machine could be one).
    assert requeues == restarts == signalled and (requeues == 1 or how == "time-limit"), log[-3000:]
    assert "ckpt_path=last: resuming from" in log and "hpc_ckpt" not in log
    assert not list(job_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue stayed off
    same_run(tmp_path / "reference", job_dir)
    assert results(job_dir)["world_size"] == tasks


def test_no_older_hpc_checkpoint_is_ever_loaded(slurm, tmp_path):
    """An ``hpc_ckpt_<n>.ckpt`` older in training than ``last.ckpt`` (from Lightning's requeue, or a
    copy) but newer on disk: under SLURM, ``ckpt_path=last``, the final validation and the test must
    all use the run's own state, never that file."""
    # 6 steps: the run stops mid-epoch, so train.py validates the final weights after fit.
    run = [*RUN, "test=true", "trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=1",
           "callbacks.model_checkpoint.save_top_k=-1"]  # fmt: skip
    reference = run_entry("train.py", *run, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    job_dir = tmp_path / "job"  # the same run, stopped (SIGTERM) after step 3
    stop = ["+callbacks.stop._target_=conftest.SigtermAt", "+callbacks.stop.step=3"]
    first = run_entry("train.py", *run, *stop, f"hydra.run.dir={job_dir}")
    assert first.returncode == 143, first.stderr[-3000:]
    stale = job_dir / "hpc_ckpt_1.ckpt"
    stale.write_bytes((job_dir / "checkpoints" / "step1.ckpt").read_bytes())  # step 1, written last
    assert ckpt(stale)["global_step"] == 1 and ckpt(job_dir / LAST)["global_step"] == 3

    env = {**os.environ, **slurm.env()}
    command = [sys.executable, str(ROOT / "train.py"), *run, "ckpt_path=last", f"hydra.run.dir={job_dir}"]
    done = subprocess.run(["srun", "--ntasks=1", "--cpus-per-task=1", *command], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert f"ckpt_path=last: resuming from {job_dir / LAST} (step 3)" in (job_dir / "train.log").read_text()
    same_run(tmp_path / "reference", job_dir)
    assert results(job_dir)["test/acc_mean"] == results(tmp_path / "reference")["test/acc_mean"]


# ----------------------------------------------------------------- torchrun
def torchrun(log: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """Starts ``torchrun args...`` (a new interpreter, as a user starts it), its output into ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "torchrun"), *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def finish(processes: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> str:
    for proc in processes:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
    out = "".join(log.read_text() for log in logs)
    assert all(proc.returncode == 0 for proc in processes), out[-5000:]
    return out


def launcher_env() -> dict[str, str]:
    """This environment without OMP_NUM_THREADS (which the test suite sets): each launcher's own default."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "WANDB_MODE": "offline"}


def test_two_torchrun_nodes_train_the_same_bits_as_one_node_with_two_processes(tmp_path):
    """Same world size, other node layout: not one bit may change. (The cause it had: each launcher
    started a different number of CPU threads a process, and CPU sums depend on it.)"""
    run = [*RUN, "trainer.max_steps=3", "trainer.limit_val_batches=1"]
    local = run_entry("train.py", *run, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'local'}")
    assert local.returncode == 0, local.stderr[-3000:]
    env, port = launcher_env(), free_port()
    logs = [tmp_path / "one.log"]
    one = torchrun(logs[0], "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
                   str(ROOT / "train.py"), *run, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'one'}",
                   env=env)  # fmt: skip
    finish([one], logs)
    port, logs = free_port(), [tmp_path / "node0.log", tmp_path / "node1.log"]
    two = [
        torchrun(
            logs[node],
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            str(ROOT / "train.py"),
            *run,
            "trainer.devices=1",
            "trainer.num_nodes=2",
            f"hydra.run.dir={tmp_path / 'two'}",
            env=env,
        )  # fmt: skip
        for node in (0, 1)
    ]
    finish(two, logs)
    for layout in ("one", "two"):
        same_run(tmp_path / "local", tmp_path / layout)
    assert results(tmp_path / "two")["world_size"] == 2


def test_an_elastic_restart_after_a_lost_rank_resumes_and_ends_as_the_uninterrupted_run(tmp_path):
    """torchrun --max-restarts=1, rank 1 killed (SIGKILL) after step 3: torchrun restarts both ranks,
    which continue from the last checkpoint (ckpt_path=last) and end bit-identical."""
    run = [*RUN, "trainer.devices=2", "callbacks.model_checkpoint.every_n_train_steps=1"]
    reference = run_entry("train.py", *run, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    kill = ["+callbacks.kill._target_=cluster_callbacks.KillRankOnce", "+callbacks.kill.step=3"]
    log = tmp_path / "torchrun.log"
    # The ranks share torchrun's store across the restart (before the fix, a restarted rank could read its
    # peer's address of the first attempt and gloo failed or hung: HydraDDPStrategy.setup_distributed).
    elastic = torchrun(log, "--standalone", "--nproc_per_node=2", "--max-restarts=1", str(ROOT / "train.py"),
                       *run, *kill, "ckpt_path=last", f"hydra.run.dir={tmp_path / 'elastic'}",
                       env=launcher_env())  # fmt: skip
    out = finish([elastic], [log])
    assert "Signals.SIGKILL" in out or "exitcode: -9" in out, out[-3000:]
    log = (tmp_path / "elastic" / "train.log").read_text()
    assert re.search(r"ckpt_path=last: resuming from .*last\.ckpt \(step [23]\)", log), log[-3000:]
    same_run(tmp_path / "reference", tmp_path / "elastic")


# ----------------------------------------------------------------- the other programs on SLURM
def test_search_runs_as_a_slurm_job_torchrun_or_srun_processes_with_the_outputs_of_a_local_search(slurm, tmp_path):
    supernet = tmp_path / "supernet"
    trained = run_entry("train.py", *RUN, "trainer.max_steps=2", f"hydra.run.dir={supernet}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    search = [f"ckpt_path={supernet / LAST}", "strategy=random", "strategy.num_samples=6", "evaluator.bn_batches=1",
              "device=cpu"]  # fmt: skip
    local = run_entry("search.py", *search, f"hydra.run.dir={tmp_path / 'local'}")
    assert local.returncode == 0, local.stderr[-3000:]
    job = run_entry("search.py", "-m", *SLURM, *search, f"hydra.sweep.dir={tmp_path / 'slurm'}", env=slurm_env(slurm))
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    # The same search spread over 2 processes, as torchrun and as 2 srun tasks start them (devices unset: as
    # many as the launcher started).
    script = [sys.executable, str(ROOT / "search.py"), *search]
    spread = {"torchrun": tmp_path / "torchrun", "srun": tmp_path / "srun"}
    logs = [tmp_path / "torchrun.log"]
    started = torchrun(logs[0], "--standalone", "--nproc_per_node=2", *script[1:],
                       f"hydra.run.dir={spread['torchrun']}", env=launcher_env())  # fmt: skip
    finish([started], logs)
    env = {**os.environ, **slurm_env(slurm)}
    srun = ["srun", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", *script]
    done = subprocess.run([*srun, f"hydra.run.dir={spread['srun']}"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    for name in ("evaluated.csv", "pareto.csv", "best.yaml"):
        local = (tmp_path / "local" / name).read_bytes()
        assert (tmp_path / "slurm" / "0" / name).read_bytes() == local, name
        for launcher, run in spread.items():
            assert (run / name).read_bytes() == local, (launcher, name)
    for run in spread.values():
        assert json.loads((run / "results.json").read_text())["processes"] == 2
    # srun --ntasks=2 leaves the tasks per node to SLURM, which Lightning cannot place: one clear error.
    refused = subprocess.run(["srun", "--ntasks=2", "--cpus-per-task=1", *script, f"hydra.run.dir={tmp_path / 'x'}"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode != 0 and "give the tasks per node instead (srun --nodes=<nodes> --ntasks-per-node=" in (
        refused.stdout + refused.stderr
    )


@pytest.mark.slow  # 2 min; in the suite, sweeps and searches go through sbatch and study jobs through a launcher
def test_a_tiny_study_runs_end_to_end_through_sbatch(slurm, tmp_path):
    """study.py launcher=slurm: every training and search run of the study is a SLURM job (9 here)."""
    out = tmp_path / "study"
    on_cpus = ["hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=null"]
    launcher = f"launcher_overrides=[{','.join(repr(o) for o in on_cpus)}]"  # quoted: each holds an '='"
    done = run_entry(
        "study.py", "study=ranking_tiny", f"study.out_dir={out}", "study.sample_size=3", "study.histogram_samples=4",
        "~study.supernets.ef", "~study.supernets.biased", "launcher=slurm", launcher, "parallel=2", "threads_per_job=1",
        env=slurm_env(slurm), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    commands = (out / "commands.sh").read_text().splitlines()
    assert len(commands) == 3 * 2 + 1 + 2 and all("hydra/launcher=slurm" in c for c in commands)
    submitted = list(out.glob("**/.submitit/*/*_submitted.pkl"))
    assert len(submitted) == len(commands)  # each run went through sbatch
    ranking = {row["predictor"]: row for row in results(out / "report")["ranking"]}
    assert ranking["sf"]["n"] == 3 and (out / "report" / "report.md").stat().st_size > 0


def test_cpu_threads_is_a_number_or_auto():
    from fairnas.errors import ConfigError
    from fairnas.system.ddp import check_cpu_threads, resolve_strategy

    assert check_cpu_threads(None) == check_cpu_threads("auto") == "auto" and check_cpu_threads("3") == 3
    for bad in (0, -1, "two", True):
        with pytest.raises(ConfigError, match="give a number of threads per process"):
            check_cpu_threads(bad)
    assert resolve_strategy("auto", "cpu", 2, cpu_threads=1).cpu_threads == 1  # DDP sets it in every process


def test_a_job_slurm_cannot_requeue_saves_and_says_how_to_continue(slurm, tmp_path):
    """The warning signal in a job SLURM does not requeue (an srun outside a batch job): the state is
    saved, the failed requeue is one message saying how to continue, and the exit code is 128 + USR2."""
    run = tmp_path / "run"
    env = {**os.environ, **slurm_env(slurm)}
    wait = ["+callbacks.wait._target_=cluster_callbacks.WaitForRequeueSignal", "+callbacks.wait.step=2"]
    command = [sys.executable, str(ROOT / "train.py"), *RUN, *wait, "ckpt_path=last", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(["srun", "--ntasks=1", "--cpus-per-task=1", *command], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for(lambda: (run / "at_step_2").exists() or proc.poll() is not None, 120, "step 2")
        job = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.split()
        subprocess.run(["scancel", "--signal=USR2", *job], env=env, check=True)
        out = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 128 + 12, out[-3000:]  # srun passes on the task's exit code: 140
    log = (run / "train.log").read_text()
    assert "requeueing SLURM job" in log and "continue it with ckpt_path=last" in log and "--requeue" in log
    assert ckpt(run / LAST)["global_step"] in (2, 3)  # saved at the step boundary after the signal
