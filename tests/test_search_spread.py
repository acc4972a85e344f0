"""search.py spread over processes (devices=2: 2 gloo processes that Lightning Fabric starts) writes the
outputs of the one-process search byte for byte, for every strategy, and a search whose rank 1 is killed
resumes from the cache without evaluating anything twice. torchrun and srun: test_cluster.py."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_entry, start_entry

from fairnas.search.spread import Spread

OUTPUTS = ("evaluated.csv", "pareto.csv", "best.yaml")
STRATEGIES = {
    "random": ["strategy=random", "strategy.num_samples=16"],
    "evolution": [
        "strategy=evolution",
        "strategy.population=8",
        "strategy.generations=3",
        "strategy.parents=4",
        "strategy.num_mutations=4",
        "strategy.num_crossovers=4",
    ],  # fmt: skip
    "nsga2": ["strategy=nsga2", "strategy.population=8", "strategy.generations=3"],
}


class FakeWorld:
    """The collectives of ``size`` ranks, played one rank after another (each rank's calls recorded)."""

    def __init__(self, size: int) -> None:
        self.size, self.sent = size, {}

    def spread(self, rank: int, parts: list[list]) -> Spread:
        def broadcast(obj):
            return self.sent.setdefault(0, obj)  # rank 0 plays first: what it sent is what every rank gets

        return Spread(rank, self.size, all_gather=lambda mine: parts, broadcast=broadcast)


def test_the_shares_cover_every_item_once_and_gather_back_in_order():
    items = [f"arch{i}" for i in range(11)]
    for size in (1, 2, 3, 4, 12):
        world = FakeWorld(size)
        shares = [Spread(r, size, lambda x: [], lambda x: x).share(items) for r in range(size)]
        assert sorted(sum(shares, [])) == sorted(items) and max(map(len, shares)) - min(map(len, shares)) <= 1
        measured = [[f"{a}:score" for a in share] for share in shares]
        for rank in range(size):
            assert world.spread(rank, measured).gather(measured[rank], len(items)) == [f"{a}:score" for a in items]


def test_an_error_on_rank_0_is_raised_on_every_rank():
    world = FakeWorld(2)

    def refuse():
        raise ValueError("the cache was written with other settings")

    main, other = world.spread(0, []), world.spread(1, [])
    with pytest.raises(ValueError, match="other settings"):
        main.agree(refuse)
    with pytest.raises(ValueError, match="other settings"):
        other.agree(lambda: pytest.fail("only rank 0 runs the action"))


@pytest.fixture(scope="module")
def supernet(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("supernet")
    trained = run_entry("train.py", "dataset=synthetic", "search_space.input_size=8", "trainer.max_steps=4",
                        "logger=none", f"hydra.run.dir={run}")  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    return run / "checkpoints" / "last.ckpt"


def search(ckpt: Path, out: Path, *overrides: str):
    return run_entry("search.py", f"ckpt_path={ckpt}", "evaluator.bn_batches=2", "device=cpu", *overrides,
                     f"hydra.run.dir={out}")  # fmt: skip


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_processes_write_the_outputs_of_one_byte_for_byte(supernet, tmp_path, strategy):
    one = search(supernet, tmp_path / "one", *STRATEGIES[strategy])
    assert one.returncode == 0, one.stderr[-3000:]
    two = search(supernet, tmp_path / "two", *STRATEGIES[strategy], "devices=2")
    assert two.returncode == 0, two.stderr[-3000:]
    for name in OUTPUTS:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two")]
    assert results[0]["processes"] == 1 and results[1]["processes"] == 2
    # Every architecture evaluated exactly once across the ranks: as many new evaluations as one process makes.
    assert results[1]["new_evaluations"] == results[0]["new_evaluations"] == results[0]["num_evaluated"]
    assert (tmp_path / "two" / "train_ddp_process_1.log").is_file()  # rank 1 ran, in the same directory
    assert not list((tmp_path / "two").glob("evaluations.jsonl.*"))  # one cache file, written by rank 0


def test_a_search_whose_rank_1_is_killed_resumes_from_the_cache(supernet, tmp_path):
    slow = ["strategy=nsga2", "strategy.population=8", "strategy.generations=15"]
    run, cache = tmp_path / "killed", tmp_path / "killed" / "evaluations.jsonl"
    proc = start_entry("search.py", f"ckpt_path={supernet}", "evaluator.bn_batches=2", "device=cpu", *slow,
                       "devices=2", f"hydra.run.dir={run}", merge=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cache.exists() and len(cache.read_text().splitlines()) > 8:  # the first generation is in the cache
            break
        time.sleep(0.02)
    rank1 = subprocess.run(["pgrep", "-f", f'hydra.run.dir="{run}"'], capture_output=True, text=True).stdout.split()
    assert rank1, "rank 1 not found (the search ended before it could be killed)"
    for pid in rank1:
        subprocess.run(["kill", f"-{signal.SIGKILL.value}", pid])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "LostProcessError: rank 0 of 2: another process of this search ended" in out
    assert "run the same command again to continue from it" in out and "Traceback" not in out, out[-3000:]
    done = len(cache.read_text().splitlines()) - 1
    assert 8 <= done < 8 * 16, done
    resumed = search(supernet, run, *slow, "devices=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = search(supernet, tmp_path / "reference", *slow)
    assert reference.returncode == 0, reference.stderr[-3000:]
    for name in OUTPUTS:
        assert (run / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    first, again = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "reference", run))
    assert again["new_evaluations"] == first["new_evaluations"] - done  # nothing evaluated twice


def test_a_spread_that_cannot_work_is_one_clear_error(supernet, tmp_path):
    sweep = run_entry("search.py", "-m", f"ckpt_path={supernet}", "device=cpu", "strategy=random",
                      "strategy.num_samples=2", "devices=2", f"hydra.sweep.dir={tmp_path / 'sweep'}")  # fmt: skip
    assert sweep.returncode == 2 and "Traceback" not in sweep.stderr, sweep.stderr[-3000:]
    assert "devices=2 in a -m sweep: the processes Fabric starts would each run the whole sweep again" in sweep.stderr
    zero = search(supernet, tmp_path / "zero", "devices=0")
    assert zero.returncode == 2 and "devices=0, num_nodes=1: give processes per node and nodes, each 1 or more" in (
        zero.stderr
    )
    threads = search(supernet, tmp_path / "threads", "cpu_threads=0")
    assert threads.returncode == 2 and "cpu_threads=0: give a number of threads per process (1, 2, ...) or auto" in (
        threads.stderr
    )
