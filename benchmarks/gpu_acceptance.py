"""GPU acceptance: one command, one table; meant to fit in 10 minutes on one GPU (never yet run on one).

    .venv/bin/python benchmarks/gpu_acceptance.py              # on a CUDA machine
    .venv/bin/python benchmarks/gpu_acceptance.py --dry-run    # CPU, tiny shapes (what the test suite runs)

Each row is a check with its measured value, its target and PASS / FAIL / info; the exit code is 1
when a check fails. The checks:
  * correct: one SF step (m = 6 paths, per_path, SGD with Nesterov momentum) in float32 on the
    device against the same step in float64 on the CPU. Tolerance: the largest difference of the
    parameter updates is at most 1e-3 of the largest update (float32 with TF32 off carries about
    7 significant digits; 1e-3 leaves room for differently ordered sums over a batch).
  * fair: the step's paths use every choice of every layer exactly once, and every choice block
    of the supernet was updated by the step on the device.
  * step / floor: the SF step against its floor, the m exported children trained one after the
    other (synchronised, median of paired repetitions in alternating order), in float32 and in
    bf16 autocast (bf16-mixed), channels_last and contiguous. Target at most 1.05 (float32).
  * memory: peak working memory of the SF step against the largest child's step (CUDA's peak
    allocator statistics; on the CPU, the profiler's traced timeline). Target at most 1.15.
  * lightning: ``train.py dataset=synthetic trainer.devices=1`` end to end on the device.
  * search: seconds per architecture of the search evaluation, the per-path reference against
    the shared pass over a group of architectures, and whether their numbers are identical.
  * search spread: ``search.py`` on the lightning check's supernet on every device of the machine
    (``devices=<GPUs>``; the dry run: 2 CPU processes) against one process: wall times, and whether
    ``evaluated.csv``, ``pareto.csv`` and ``best.yaml`` are the same bytes (gated on the CPU; on GPUs
    information only, as cuDNN may pick other kernels in another process).
  * latency table: a table of ``fairnas_mini`` measured on the device with PyTorch
    (``latency.py runtime=torch device=cuda``), validated on 30 other random networks measured
    whole: median absolute percentage error and Kendall tau (information: the project's goals,
    10% and 0.8, were set for onnxruntime on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, Setup, load_space, sgd  # noqa: E402

from fairnas.data import SyntheticDataModule  # noqa: E402
from fairnas.models import CostModel, SearchSpace, Supernet, layout  # noqa: E402
from fairnas.samplers import StrictFairSampler  # noqa: E402
from fairnas.search import SupernetEvaluator, materialise  # noqa: E402

UPDATE_TOLERANCE = 1e-3
STEP_TARGET = 1.05
MEMORY_TARGET = 1.15


def tiny_space() -> SearchSpace:
    """3 searchable layers x 3 choices on 8x8 images: the dry run's shapes."""
    return SearchSpace.create(
        name="tiny", input_size=8, in_channels=3, num_classes=4, stem={"out": 4, "kernel": 3, "stride": 1},
        choices=["ir_k3_e1", "ir_k3_e2", "skip"],
        stages=[{"out": 4, "layers": 2, "stride": 1}, {"out": 8, "layers": 1, "stride": 2, "choices": ["ir_k3_e2"]},
                {"out": 8, "layers": 1, "stride": 1}],
        head={"channels": 8, "dropout": 0.0},
    )  # fmt: skip


def make_setup(space: SearchSpace, batch: int, device: torch.device, memory_format: str, dtype=torch.float32) -> Setup:
    supernet = layout.to_layout(Supernet(space, seed=0).to(device, dtype), memory_format)
    paths = StrictFairSampler(space.num_layers, space.num_choices, seed=0).sample(0)[0]
    children = [layout.to_layout(supernet.export(arch), memory_format) for arch in paths]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, space.in_channels, space.input_size, space.input_size, generator=g).to(dtype)
    y = torch.randint(0, space.num_classes, (batch,), generator=g)
    return Setup(space.name, supernet, paths, children, layout.as_layout(x.to(device), memory_format), y.to(device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_correctness(space: SearchSpace, batch: int, device: torch.device) -> list[tuple]:
    """One SF step on ``device`` in float32 against the CPU float64 step; the fairness of that step."""
    ref = make_setup(space, batch, torch.device("cpu"), "contiguous", torch.float64)
    dev = make_setup(space, batch, device, "channels_last")
    before = {k: v.detach().clone() for k, v in ref.supernet.named_parameters()}
    dev_before = {id(p): p.detach().clone() for p in dev.supernet.parameters()}
    ref.sf_step(sgd(ref.supernet.parameters()))
    dev.sf_step(sgd(dev.supernet.parameters()))
    sync(device)
    worst = largest = 0.0
    dev_params = dict(dev.supernet.named_parameters())
    for name, p in ref.supernet.named_parameters():
        update_ref = p.detach() - before[name]
        update_dev = dev_params[name].detach().double().cpu() - before[name]
        worst = max(worst, float((update_dev - update_ref).abs().max()))
        largest = max(largest, float(update_ref.abs().max()))
    relative = worst / largest
    counts = np.zeros((space.num_layers, space.num_choices), dtype=int)
    for arch in dev.paths:
        counts[np.arange(space.num_layers), arch] += 1
    untouched = [
        f"{layer}:{choice}"
        for layer in range(space.num_layers)
        for choice, block in enumerate(dev.supernet.choice_blocks(layer))
        if all(torch.equal(p.detach(), dev_before[id(p)]) for p in block.parameters())  # skip: no parameters
        and any(True for _ in block.parameters())
    ]
    fair = bool((counts == 1).all()) and not untouched
    return [
        ("correct", f"sf step float32 on {device.type} vs float64 cpu", f"{relative:.2e}",
         f"<= {UPDATE_TOLERANCE:g} of the largest update", relative <= UPDATE_TOLERANCE),
        ("fair", f"uses per (layer, choice) min/max {counts.min()}/{counts.max()}, blocks not updated {len(untouched)}",
         "1/1, 0", "every choice once, every block updated", fair),
    ]  # fmt: skip


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def paired_step(s: Setup, device: torch.device, precision: str, reps: int) -> tuple[float, float, float]:
    """Median (SF step / floor, SF step s, floor s) over ``reps`` paired repetitions in alternating order."""
    opts = [sgd(c.parameters()) for c in s.children]
    sf_opt = sgd(s.supernet.parameters())
    bf16 = precision == "bf16-mixed"

    def floor() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            for child, opt in zip(s.children, opts, strict=True):
                s.child_step(child, opt)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            s.sf_step(sf_opt)

    floor(), step()  # warm-up, optimizer state
    times: dict[str, list[float]] = {"sf": [], "floor": []}
    for rep in range(reps):
        for name in ("floor", "sf") if rep % 2 == 0 else ("sf", "floor"):
            times[name].append(timed(step if name == "sf" else floor, device))
    ratios = [a / b for a, b in zip(times["sf"], times["floor"], strict=True)]
    return statistics.median(ratios), statistics.median(times["sf"]), statistics.median(times["floor"])


def check_step(space: SearchSpace, batch: int, device: torch.device, reps: int, gate: bool = True) -> list[tuple]:
    """SF step against the m-children floor, per precision and layout (``gate``: float32 must meet the target)."""
    rows = []
    for memory_format in ("channels_last", "contiguous"):
        for precision in ("float32", "bf16-mixed"):
            ratio, sf, floor = paired_step(make_setup(space, batch, device, memory_format), device, precision, reps)
            value = f"{ratio:.3f} ({sf * 1e3:.1f} / {floor * 1e3:.1f} ms)"
            gated = gate and precision == "float32"
            setting = f"{space.name} batch {batch}, {precision}, {memory_format}"
            rows.append(("step / floor", setting, value, f"<= {STEP_TARGET}" if gated else "info",
                         ratio <= STEP_TARGET if gated else None))  # fmt: skip
    return rows


def check_memory(space: SearchSpace, batch: int, device: torch.device, gate: bool = True) -> list[tuple]:
    """Peak working memory of the SF per_path step against the largest child's step."""
    s = make_setup(space, batch, device, "channels_last")

    if device.type == "cuda":

        def peak(fn: Callable[[], None]) -> float:
            fn()  # optimizer state exists from here on, as in training
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            torch.cuda.synchronize(device)
            return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        from bench_memory import traced

        def peak(fn: Callable[[], None]) -> float:
            return traced(fn)["working"]

    children = []
    for child in s.children:
        opt = sgd(child.parameters())
        children.append(peak(lambda c=child, o=opt: s.child_step(c, o)))
    sf_opt = sgd(s.supernet.parameters())
    sf = peak(lambda: s.sf_step(sf_opt))
    ratio = sf / max(children)
    value = f"{ratio:.3f} ({sf:.1f} / {max(children):.1f} MB)"
    setting = f"{space.name} batch {batch}, sf per_path vs largest child"
    target = f"<= {MEMORY_TARGET}" if gate else "info"
    return [("memory", setting, value, target, ratio <= MEMORY_TARGET if gate else None)]


def check_lightning(device: torch.device, dry_run: bool, tmp: str) -> list[tuple]:
    """train.py with trainer.devices=1 on synthetic data, end to end, as a user runs it (its run in ``tmp``)."""
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    steps = 2 if dry_run else 40
    overrides = [
        "dataset=synthetic", "dataset.batch_size=64", f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=1", f"trainer.accelerator={accelerator}", "trainer.devices=1", "logger=none",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp}",
    ]  # fmt: skip
    if dry_run:
        overrides += ["system.val_archs=1", "system.val_bn_batches=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    wall = time.perf_counter() - start
    results = Path(tmp) / "results.json"
    ok = proc.returncode == 0 and results.exists() and (Path(tmp) / "checkpoints" / "last.ckpt").exists()
    detail = f"exit {proc.returncode}, {wall:.0f} s"
    if ok:
        acc = json.loads(results.read_text()).get("val/acc_mean")
        detail += f", val/acc_mean {acc:.3f}" if isinstance(acc, float) else ""
    else:
        print(proc.stderr[-3000:], file=sys.stderr)
    return [("lightning", f"train.py trainer.accelerator={accelerator} trainer.devices=1, {steps} steps", detail,
             "exit 0, checkpoint written", ok)]  # fmt: skip


def check_search(space: SearchSpace, device: torch.device, group: int, dry_run: bool) -> list[tuple]:
    """Search evaluation per architecture: per-path reference vs the shared pass over a group."""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True  # identical numbers need the same kernels in both passes
        torch.backends.cudnn.benchmark = False
    size = 8 if dry_run else space.input_size
    dm = SyntheticDataModule(image_size=size, channels=space.in_channels, num_classes=space.num_classes,
                             num_train=256 if dry_run else 5120, num_val=64 if dry_run else 5000,
                             batch_size=16 if dry_run else 128, eval_batch_size=32 if dry_run else 500)  # fmt: skip
    dm.setup("fit")
    calib = materialise(dm.calibration_dataloader(2 if dry_run else 10, seed=0), None, device)
    val = materialise(dm.val_dataloader(), None, device)
    supernet = Supernet(space, seed=0).to(device)
    ev = SupernetEvaluator(supernet, calib, val, CostModel.create(space, size))
    rng = np.random.default_rng(0)
    archs = [tuple(int(c) for c in r) for r in rng.integers(0, space.num_choices, (group, space.num_layers))]
    ev.evaluate_reference(archs[0])  # warm-up
    out: dict[str, list] = {}
    reference = timed(lambda: out.__setitem__("reference", [ev.evaluate_reference(a) for a in archs]), device)
    shared = timed(lambda: out.__setitem__("shared", ev.evaluate_many(archs)), device)
    same = out["reference"] == out["shared"]
    return [("search", f"{space.name}, group of {group} random architectures on {device.type}",
             f"{reference / group * 1e3:.1f} -> {shared / group * 1e3:.1f} ms/arch ({reference / shared:.2f}x), "
             f"identical: {'yes' if same else 'no'}", "identical", same)]  # fmt: skip


def check_search_spread(device: torch.device, dry_run: bool, supernet_dir: str) -> list[tuple]:
    """search.py on every device (dry run: 2 CPU processes) against one process, as a user runs it."""
    ckpt = Path(supernet_dir) / "checkpoints" / "last.ckpt"
    processes = 2 if dry_run or device.type != "cuda" else max(torch.cuda.device_count(), 1)
    name = "cuda" if device.type == "cuda" else "cpu"
    search = ["strategy=random", f"strategy.num_samples={8 if dry_run else 400}", f"device={name}", "logger=none"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    walls, ok = {}, True
    with tempfile.TemporaryDirectory() as tmp:
        for layout, extra in (("one", []), ("spread", [f"devices={processes}"] if processes > 1 else [])):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, str(ROOT / "search.py"), f"ckpt_path={ckpt}", *search, *extra,
                                   f"hydra.run.dir={tmp}/{layout}"], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=600)  # fmt: skip
            walls[layout] = time.perf_counter() - start
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                ok = False
        same = ok and all(
            (Path(tmp) / "one" / n).read_bytes() == (Path(tmp) / "spread" / n).read_bytes()
            for n in ("evaluated.csv", "pareto.csv", "best.yaml")
        )
    value = (f"1 process {walls.get('one', 0):.0f} s, {processes} processes {walls.get('spread', 0):.0f} s, "
             f"identical outputs: {'yes' if same else 'no'}")  # fmt: skip
    result = False if not ok else (same if device.type != "cuda" else None)  # GPUs: identical is information
    return [("search spread", f"search.py devices={processes} on {name}, {search[0]} {search[1]}", value,
             "exit 0; identical (CPU)", result)]  # fmt: skip


def check_latency_table(space: SearchSpace, device: torch.device, dry_run: bool) -> list[tuple]:
    """A PyTorch latency table on the device, validated on other random networks measured whole."""
    from fairnas.deploy.latency import TorchRuntime, build_table, validate_table

    runtime = TorchRuntime(device.type, threads=1)
    settings = {"warmup": 2, "repeats": 5, "rounds": 1} if dry_run else {"warmup": 20, "repeats": 100, "rounds": 5}
    start = time.perf_counter()
    table = build_table(space, runtime, fit_archs=3 if dry_run else 20, **settings)
    v = validate_table(table, space, runtime, count=3 if dry_run else 30)
    measured = v["measured_ms"]
    value = (f"MdAPE {v['mdape_percent']:.1f}%, Kendall tau {v['kendall_tau']:.3f} ({v['archs']} networks, "
             f"{measured['min']:.3f}-{measured['max']:.3f} ms), {time.perf_counter() - start:.0f} s")  # fmt: skip
    return [("latency table", f"{space.name}, torch on {device.type}, batch 1", value, "info (CPU goals: <= 10%, "
             ">= 0.8)", None)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks that the script works")
    parser.add_argument("--reps", type=int, default=None, help="paired repetitions per timing (default 15; 3 dry)")
    args = parser.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
        spaces = [(tiny_space(), 8)]
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = False  # the correctness check compares float32, not TF32
        torch.backends.cudnn.allow_tf32 = False
        spaces = [(load_space("fairnas_mini"), 128), (load_space("fairnas_cifar"), 64)]
    else:
        print("no CUDA device here: run with --dry-run for the CPU check of this script", file=sys.stderr)
        return 2
    reps = args.reps or (3 if args.dry_run else 15)
    started = time.perf_counter()
    rows = []
    for space, batch in spaces:
        rows += check_correctness(space, batch, device)
        # Timings and memory of tiny shapes on a shared CPU say nothing: a dry run reports them ungated.
        rows += check_step(space, batch, device, reps, gate=not args.dry_run)
        rows += check_memory(space, batch, device, gate=not args.dry_run)
    with tempfile.TemporaryDirectory() as run:
        rows += check_lightning(device, args.dry_run, run)
        rows += check_search(spaces[0][0], device, 4 if args.dry_run else 40, args.dry_run)
        rows += check_search_spread(device, args.dry_run, run)
    rows += check_latency_table(spaces[0][0], device, args.dry_run)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run, tiny shapes)"
    print(f"GPU acceptance on {name}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s\n")
    print("| check | setting | measured | target | result |")
    print("|---|---|---|---|---|")
    for check, setting, value, target, ok in rows:
        result = "info" if ok is None else ("PASS" if ok else "FAIL")
        print(f"| {check} | {setting} | {value} | {target} | {result} |")
    return 1 if any(ok is False for *_, ok in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
