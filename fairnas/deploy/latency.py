"""Latency lookup tables: every block measured once on the target device, summed for any architecture.

A table (:class:`LatencyTable`) is built once on the device the network will run on
(:func:`build_table`, ``latency.py``): the stem, every (layer, choice) block in its context (the
input shape it gets in the network) and the head are each run alone at batch 1 in the runtime
(onnxruntime or PyTorch), with a fixed thread count, warm-up runs, and the median of repeated runs
taken round after round over all of them, so that a slow moment of the machine falls on every unit
alike. A call costs something even when it computes nothing (the runtime's own overhead), which a
sum of 10 units would count 10 times: the cost of a near-empty call with the unit's input shape is
subtracted from each unit and counted once, in the fitted constant. Blocks that are the identity at
their layer (``skip``) cost nothing: exported networks drop them.

The prediction of an architecture is ``scale * (stem + its blocks + head) + offset``. ``scale``
and ``offset`` are fitted on ``fit_archs`` architectures measured whole (:func:`fit_networks`: the
fewest- and most-MAdds ones and random ones; :func:`fit_prediction`: a constant, or a least-squares
line where leave-one-out says the sum is biased), in
the same runtime; with none, ``scale`` is 1 and ``offset`` one call's overhead. The table can
check itself (:func:`validate_table`): predicted against measured latency of other random
architectures, as the median absolute percentage error and Kendall's tau, saved in the table.

The table names the device, the runtime and its version, the threads and the measurement
settings, and the exact shape of the space it was measured for: a search refuses a table of
another space or input shape (:meth:`LatencyTable.check_matches`). Nothing here imports
onnxruntime until a table is measured, so a search with a table runs where no runtime is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairnas.analysis.ranking import kendall_tau
from fairnas.analysis.sampling import extreme_archs
from fairnas.errors import ConfigError
from fairnas.models import CostModel, SearchSpace, build_child
from fairnas.models.blocks import ConvBNAct, Head, init_weights
from fairnas.utils import write_json_atomic

TABLE_FORMAT = "fairnas-latency-table"
TABLE_VERSION = 1
RUNTIMES = ("onnxruntime", "torch")
DEVICES = ("cpu", "cuda")


# ---------------------------------------------------------------------------------- the table
def space_signature(space: SearchSpace, input_size: int, in_channels: int, num_classes: int) -> dict[str, Any]:
    """What a block's latency depends on: the shape of every layer and its choices, stem, head and input."""
    return {
        "input": [in_channels, input_size, input_size],
        "stem": [space.stem_channels, space.stem_kernel, space.stem_stride],
        "layers": [
            [lay.in_channels, lay.out_channels, lay.stride, [str(c) for c in lay.choices]] for lay in space.layers
        ],
        "head": [space.head_channels, num_classes],
        "activation": space.activation,
    }


@dataclass
class LatencyTable:
    """Per-block latencies of one space on one device and runtime, and the fit that turns their sum into a network's.

    Attributes:
        space: The space's name (for messages; matching uses ``signature``).
        signature: :func:`space_signature` of the space and input it was measured for.
        device: What ran it (``type``, ``name``, ``machine``, ``cores``).
        runtime: ``onnxruntime`` or ``torch``; ``runtime_version`` its version.
        threads: Intra-op threads of every run.
        settings: ``warmup``, ``repeats``, ``rounds``, ``batch`` (1), ``seed``.
        stem_ms, head_ms: The stem's and the head's latency (overhead removed).
        layers: For every layer of the body (fixed ones included), the latency of each choice (ms,
            overhead removed; 0 for a choice that is the identity there).
        scale, offset_ms: The fit: prediction = ``scale`` * sum + ``offset_ms``.
        units: Every measured unit: name, input shape, raw median, overhead subtracted.
        fit: How the fit was made (architectures, their measured and summed latencies).
        validation: Predicted against measured latency of other architectures, when validated.
        created: When it was measured (UTC).
    """

    space: str
    signature: dict[str, Any]
    device: dict[str, Any]
    runtime: str
    runtime_version: str
    threads: int
    settings: dict[str, Any]
    stem_ms: float
    head_ms: float
    layers: list[list[float]]
    scale: float = 1.0
    offset_ms: float = 0.0
    units: list[dict[str, Any]] = field(default_factory=list)
    fit: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] | None = None
    created: str = ""

    # ------------------------------------------------------------------ predictions
    def block_sum(self, space: SearchSpace, arch: Sequence[int]) -> float:
        """Stem + the chosen block of every layer + head (ms), before the fit."""
        choices = space.full_choices(arch)
        return self.stem_ms + sum(row[c] for row, c in zip(self.layers, choices, strict=True)) + self.head_ms

    def predict(self, space: SearchSpace, arch: Sequence[int]) -> float:
        """The predicted batch-1 latency (ms) of ``arch`` on the table's device and runtime."""
        return self.scale * self.block_sum(space, arch) + self.offset_ms

    def predictor(self, space: SearchSpace) -> Callable[[Sequence[int]], float]:
        """``arch -> predicted ms`` for ``space``, which must be the table's (:meth:`check_matches`)."""
        return lambda arch: self.predict(space, arch)

    def describe(self) -> str:
        d = self.device
        return (f"{self.runtime} {self.runtime_version} on {d.get('type')} ({d.get('name')}), {self.threads} "
                f"thread(s)")  # fmt: skip

    # ------------------------------------------------------------------ matching
    def check_matches(self, space: SearchSpace, input_size: int, in_channels: int, num_classes: int,
                      where: str = "the latency table") -> None:  # fmt: skip
        """Refuses a table measured for another space or input shape: its blocks are other blocks."""
        wanted = space_signature(space, input_size, in_channels, num_classes)
        for key, value in wanted.items():
            have = self.signature.get(key)
            if have != value:
                if key == "layers" and isinstance(have, list) and len(have) == len(value):
                    i = next(i for i, (a, b) in enumerate(zip(have, value, strict=True)) if a != b)
                    have, value, key = have[i], value[i], f"layer {i}"
                raise ConfigError(
                    f"{where} was measured for space {self.space!r} with {key} {have}, but this search's space "
                    f"{space.name!r} has {key} {value}. Its blocks are other blocks: build a table for this space "
                    f"and input (python latency.py search_space={space.name} input_size={input_size} "
                    f"in_channels={in_channels} num_classes={num_classes})"
                )

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Reads a table file, with one clear error for every way it can be wrong."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"latency table {path} does not exist: build one with python latency.py search_space=...")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"latency table {path} is not JSON ({err}): give a file latency.py wrote") from None
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise ConfigError(
                f"{path} is not a fairnas latency table (no format: {TABLE_FORMAT}): build one with latency.py"
            )
        if data.get("version") != TABLE_VERSION:
            raise ConfigError(
                f"{path} is a latency table of version {data.get('version')!r}; this fairnas reads version "
                f"{TABLE_VERSION}: build it again with this fairnas's latency.py"
            )
        try:
            table = cls(**{k: v for k, v in data.items() if k not in ("format", "version")})
        except TypeError as err:
            raise ConfigError(f"{path} is a damaged latency table ({err}): build it again with latency.py") from None
        table._check_numbers(path)
        return table

    def _check_numbers(self, path: Path) -> None:
        layers = self.signature.get("layers") if isinstance(self.signature, dict) else None
        rows_ok = (
            isinstance(layers, list) and isinstance(self.layers, list) and len(self.layers) == len(layers)
            and all(isinstance(r, list) and len(r) == len(sig[3]) for r, sig in zip(self.layers, layers, strict=True))
        )  # fmt: skip
        numbers = (
            [self.stem_ms, self.head_ms, self.scale, self.offset_ms, *(v for r in self.layers for v in r)]
            if rows_ok
            else []
        )
        if not rows_ok or not all(_finite_number(v) for v in numbers):
            raise ConfigError(
                f"{path} is a damaged latency table (its per-layer latencies do not match its layers, or are not "
                "finite numbers): build it again with latency.py"
            )


def _finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


# ---------------------------------------------------------------------------------- runtimes
class Runtime:
    """Runs a module at batch 1 in one runtime; :meth:`runner` gives a call to time."""

    name = ""
    clock: Callable[[], float] = staticmethod(time.perf_counter)  # seconds; what the timings read

    def __init__(self, device: str = "cpu", threads: int = 1) -> None:
        if device not in DEVICES:
            raise ConfigError(f"device={device!r}: give one of {list(DEVICES)}")
        if type(threads) is not int or threads < 1:
            raise ConfigError(f"threads={threads!r}: give a whole number >= 1 (fixed, so that tables compare)")
        self.device, self.threads = device, threads

    @property
    def version(self) -> str:
        raise NotImplementedError

    def runner(self, module: Any, example: Any) -> Callable[[], Any]:
        raise NotImplementedError

    def session(self) -> contextlib.AbstractContextManager[None]:
        """Context in which :meth:`runner`'s calls are timed (thread settings); nothing by default."""
        return contextlib.nullcontext()


class OnnxRuntime(Runtime):
    """onnxruntime: the module exported to ONNX as ``export.py`` exports it, run in a session with ``threads``."""

    name = "onnxruntime"

    def __init__(self, device: str = "cpu", threads: int = 1, opset: int = 18) -> None:
        super().__init__(device, threads)
        from fairnas.deploy.export import onnxruntime_module

        self.ort = onnxruntime_module()
        self.opset = opset

    @property
    def version(self) -> str:
        return self.ort.__version__

    def runner(self, module: Any, example: Any) -> Callable[[], Any]:
        from fairnas.deploy.export import INPUT_NAME, onnx_session, to_onnx

        session = onnx_session(to_onnx(module.eval(), example, self.opset), self.threads, self.device)
        feed = {INPUT_NAME: example.numpy()}
        return lambda: session.run(None, feed)


class TorchRuntime(Runtime):
    """PyTorch eager on ``device``, ``threads`` intra-op threads, no autograd."""

    name = "torch"

    @property
    def version(self) -> str:
        return torch.__version__

    def runner(self, module: Any, example: Any) -> Callable[[], Any]:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is available here: use device=cpu")
        module = module.eval().to(self.device)
        x = example.to(self.device)
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)

        def run() -> None:
            with torch.inference_mode():
                module(x)
            sync()

        return run

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def make_runtime(runtime: str, device: str = "cpu", threads: int = 1, opset: int = 18) -> Runtime:
    if runtime == "onnxruntime":
        return OnnxRuntime(device, threads, opset)
    if runtime == "torch":
        return TorchRuntime(device, threads)
    raise ConfigError(f"runtime={runtime!r}: give one of {list(RUNTIMES)}")


def device_info(device: str) -> dict[str, Any]:
    """The machine a table was measured on, as far as it can be told."""
    info: dict[str, Any] = {"type": device, "machine": platform.machine(), "cores": os.cpu_count()}
    if device == "cuda":
        info["name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown CUDA device"
        return info
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["name"] = name
    return info


def time_units(runners: dict[str, Callable[[], Any]], warmup: int, repeats: int, rounds: int,
               rng: random.Random, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:  # fmt: skip
    """Median latency (ms) of each runner: ``rounds`` rounds over all of them (in a new order each round), each
    ``warmup`` untimed calls then the median of ``repeats`` timed ones; the median over the rounds."""
    for name, value in (("warmup", warmup), ("repeats", repeats), ("rounds", rounds)):
        if type(value) is not int or value < (0 if name == "warmup" else 1):
            raise ConfigError(f"{name}={value!r}: give a whole number >= {0 if name == 'warmup' else 1}")
    per_round: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            run = runners[key]
            for _ in range(warmup):
                run()
            times = []
            for _ in range(repeats):
                start = clock()
                run()
                times.append(clock() - start)
            per_round[key].append(statistics.median(times) * 1e3)
    return {k: statistics.median(v) for k, v in per_round.items()}


# ---------------------------------------------------------------------------------- measuring a table
class _Null(nn.Module):
    """A near-empty network: what a call of the runtime costs when it computes (almost) nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :1] * 2.0


def _units(space: SearchSpace, input_size: int, in_channels: int, num_classes: int, seed: int) -> list[dict[str, Any]]:
    """Every unit to time: the stem, each non-identity (layer, choice) block, the head; each with its input."""

    act = space.activation
    units = []

    def add(name: str, module: Any, x: Any, **where: Any) -> Any:
        init_weights(module, seed)
        module.eval()
        with torch.no_grad():
            y = module(x)
        units.append({"name": name, "module": module, "example": x, "input_shape": list(x.shape[1:]), **where})
        return torch.zeros_like(y)

    x = torch.zeros(1, in_channels, input_size, input_size)
    x = add("stem", ConvBNAct(in_channels, space.stem_channels, space.stem_kernel, space.stem_stride, act=act), x)
    for i, layer in enumerate(space.layers):
        out = None
        for c, block in enumerate(layer.choices):
            if block.is_identity(layer.in_channels, layer.out_channels, layer.stride):
                continue
            y = add(f"layer{i}:{block}", block.build(layer.in_channels, layer.out_channels, layer.stride, act), x,
                    layer=i, choice=c)  # fmt: skip
            out = y if out is None else out
        x = out if out is not None else x  # every choice of a layer gives the same shape
    add("head", Head(space.layers[-1].out_channels, space.head_channels, num_classes, space.dropout, act), x)
    return units


def random_archs(
    space: SearchSpace, count: int, rng: random.Random, exclude: set[tuple[int, ...]] = frozenset()
) -> list[tuple[int, ...]]:
    """``count`` distinct random architectures (fewer if the space has fewer), none of ``exclude``."""
    count = min(count, space.size - len(exclude))
    found: dict[tuple[int, ...], None] = {}
    while len(found) < count:
        arch = tuple(rng.randrange(space.num_choices) for _ in range(space.num_layers))
        if arch not in exclude:
            found[arch] = None
    return list(found)


def fit_networks(space: SearchSpace, count: int, rng: random.Random, cost: CostModel) -> list[tuple[int, ...]]:
    """The fit's networks, spanning the space: the fewest- and the most-MAdds architectures, then random ones.

    Random architectures alone cluster in the middle of the latency range, where a fitted line is
    well determined but says nothing of the ends; a search's front reaches the ends (its smallest
    networks), so the fit includes them. With ``count`` < 2, random ones only.
    """
    ends = list(dict.fromkeys(extreme_archs(space, cost))) if count >= 2 else []
    return ends + random_archs(space, count - len(ends), rng, set(ends))


def _network_runners(space: SearchSpace, archs: Sequence[Sequence[int]], runtime: Runtime, input_size: int,
                     in_channels: int, num_classes: int, seed: int) -> dict[str, Callable[[], Any]]:  # fmt: skip
    """A batch-1 call of each architecture's whole network, built as ``export.py`` exports it, keyed ``net:<arch>``."""
    example = torch.zeros(1, in_channels, input_size, input_size)
    return {
        f"net:{space.format_arch(a)}": runtime.runner(
            build_child(space, a, num_classes, in_channels, seed=seed), example
        )
        for a in archs
    }


def measure_networks(space: SearchSpace, archs: Sequence[Sequence[int]], runtime: Runtime, input_size: int,
                     in_channels: int, num_classes: int, warmup: int, repeats: int, rounds: int,
                     seed: int) -> list[float]:  # fmt: skip
    """Whole-network batch-1 latency (ms) of each architecture (:func:`time_units` over all of them)."""
    runners = _network_runners(space, archs, runtime, input_size, in_channels, num_classes, seed)
    with runtime.session():
        times = time_units(runners, warmup, repeats, rounds, random.Random(seed), runtime.clock)
    return [times[f"net:{space.format_arch(a)}"] for a in archs]


def build_table(
    space: SearchSpace,
    runtime: Runtime,
    input_size: int | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    warmup: int = 20,
    repeats: int = 100,
    rounds: int = 5,
    fit_archs: int = 20,
    seed: int = 0,
    validate: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> LatencyTable:
    """Measures every block of ``space`` on ``runtime`` and fits the sum to ``fit_archs`` whole networks.

    With ``validate`` > 0, that many other random networks (drawn with ``seed + 1``, none of the fit's)
    are timed whole in the same rounds as the blocks, so that a shared machine's drift between two
    moments falls on both alike, and compared with the table's prediction (``table.validation``). To
    check a table at another moment or on another machine, use :func:`validate_table`.
    """
    input_size = input_size or space.input_size
    in_channels = in_channels or space.in_channels
    num_classes = num_classes or space.num_classes
    if type(fit_archs) is not int or fit_archs < 0:
        raise ConfigError(f"fit_archs={fit_archs!r}: give a whole number >= 0 (0: no fit, overhead counted once)")
    rng = random.Random(seed)
    units = _units(space, input_size, in_channels, num_classes, seed)
    progress(f"preparing {len(units)} blocks in {runtime.name}")
    runners = {u["name"]: runtime.runner(u["module"], u["example"]) for u in units}
    shapes = {tuple(u["input_shape"]) for u in units}
    nulls = {f"overhead:{'x'.join(map(str, s))}": s for s in shapes}
    for key, shape in nulls.items():
        runners[key] = runtime.runner(_Null(), torch.zeros(1, *shape))
    archs = fit_networks(space, fit_archs, rng, CostModel.create(space, input_size, num_classes, in_channels))
    if type(validate) is not int or validate < 0:
        raise ConfigError(f"validate={validate!r}: give a number of networks >= 0")
    held_out = random_archs(space, validate, random.Random(seed + 1), set(archs)) if validate else []
    if archs or held_out:  # timed in the same rounds as the blocks: sums and wholes measured alike
        progress(f"preparing {len(archs)} whole networks for the fit and {len(held_out)} to validate on")
        runners.update(_network_runners(space, archs + held_out, runtime, input_size, in_channels, num_classes, seed))
    progress(f"timing {len(runners)} units, {rounds} rounds of {warmup} + {repeats} runs")
    with runtime.session():
        times = time_units(runners, warmup, repeats, rounds, rng, runtime.clock)
    overhead = {s: times[k] for k, s in nulls.items()}
    layers = [[0.0] * len(layer.choices) for layer in space.layers]
    records = []
    for u in units:
        null = overhead[tuple(u["input_shape"])]
        ms = times[u["name"]] - null
        records.append({"name": u["name"], "input_shape": u["input_shape"], "raw_ms": times[u["name"]],
                        "overhead_ms": null, "ms": ms})  # fmt: skip
        if "layer" in u:
            layers[u["layer"]][u["choice"]] = ms
    stem = next(r["ms"] for r in records if r["name"] == "stem")
    head = next(r["ms"] for r in records if r["name"] == "head")
    input_null = overhead[(in_channels, input_size, input_size)]
    table = LatencyTable(
        space=space.name,
        signature=space_signature(space, input_size, in_channels, num_classes),
        device=device_info(runtime.device),
        runtime=runtime.name,
        runtime_version=runtime.version,
        threads=runtime.threads,
        settings={"warmup": warmup, "repeats": repeats, "rounds": rounds, "batch": 1, "seed": seed},
        stem_ms=stem,
        head_ms=head,
        layers=layers,
        scale=1.0,
        offset_ms=input_null,
        units=records,
        fit={"method": "none: scale 1, offset one call's overhead", "archs": 0},
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if archs:
        measured = [times[f"net:{space.format_arch(a)}"] for a in archs]
        sums = [table.block_sum(space, a) for a in archs]
        fitted = fit_prediction(sums, measured)
        table.scale, table.offset_ms = fitted["scale"], fitted["offset_ms"]
        predicted = [table.predict(space, a) for a in archs]
        table.fit = {
            "method": {"constant": "sum + the median offset", "line": "least squares: scale * sum + offset"}[
                fitted["method"]
            ],
            "leave_one_out_mdape_percent": fitted["leave_one_out_mdape_percent"],
            "archs": len(archs),
            "mdape_percent": mdape(predicted, measured),
            "rows": [
                {"arch": space.format_arch(a), "sum_ms": s, "measured_ms": m}
                for a, s, m in zip(archs, sums, measured, strict=True)
            ],  # fmt: skip
        }
    if held_out:
        measured = [times[f"net:{space.format_arch(a)}"] for a in held_out]
        table.validation = _validation(table, space, held_out, measured, runtime, seed + 1, "with the table")
    return table


def _line(sums: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """``scale, offset`` of the least-squares line ``measured = scale * sum + offset``."""
    n = len(sums)
    mean_s, mean_m = sum(sums) / n, sum(measured) / n
    var = sum((s - mean_s) ** 2 for s in sums)
    if var == 0:
        return 1.0, mean_m - mean_s
    scale = sum((s - mean_s) * (m - mean_m) for s, m in zip(sums, measured, strict=True)) / var
    return scale, mean_m - scale * mean_s


def _constant(sums: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """``1, offset`` with the median offset between measured and summed latency (robust to a slow run)."""
    return 1.0, statistics.median(m - s for s, m in zip(sums, measured, strict=True))


FITS = {"constant": _constant, "line": _line}


def fit_prediction(sums: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """The sum plus a fitted constant, or a fitted line ``scale * sum + offset`` where the sum is biased.

    Which of the two is chosen on the fit's networks alone, by leave-one-out: each network is predicted
    by the fit of the others, and the line is taken only when its median absolute percentage error is
    lower than the constant's (with fewer than 4 networks, the constant).

    Returns:
        ``scale``, ``offset_ms``, ``method``, and the leave-one-out error of each candidate (percent).
    """
    n = len(sums)
    loo = {}
    if n >= 4:
        for name, fit in FITS.items():
            predicted = []
            for i in range(n):
                scale, offset = fit(
                    [s for j, s in enumerate(sums) if j != i], [m for j, m in enumerate(measured) if j != i]
                )
                predicted.append(scale * sums[i] + offset)
            loo[name] = mdape(predicted, measured)
    method = "line" if loo and loo["line"] < loo["constant"] else "constant"
    scale, offset = FITS[method](sums, measured)
    return {"scale": scale, "offset_ms": offset, "method": method, "leave_one_out_mdape_percent": loo}


def mdape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Median absolute percentage error of ``predicted`` against ``measured``."""
    return statistics.median(abs(p - m) / m * 100 for p, m in zip(predicted, measured, strict=True))


def validate_table(table: LatencyTable, space: SearchSpace, runtime: Runtime, count: int = 50, seed: int = 1,
                   archs: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Predicted against measured whole-network latency, measured now: at another moment than the table, or on
    another machine of the same kind.

    Args:
        archs: The networks to measure (e.g. the table's own validation networks, to see how much a machine
            drifts between two moments); default: ``count`` random ones (``seed``) not used by the fit.

    Returns (and stores in ``table.validation``) what :func:`build_table` stores for ``validate``.
    """
    c, size, _ = table.signature["input"]
    if archs is None:
        used = {tuple(space.parse_arch(r["arch"])) for r in table.fit.get("rows", [])}
        archs = random_archs(space, count, random.Random(seed), used)
    archs = [tuple(space.parse_arch(a)) for a in archs]
    s = table.settings
    measured = measure_networks(space, archs, runtime, size, c, table.signature["head"][1], s["warmup"], s["repeats"],
                                s["rounds"], s["seed"])  # fmt: skip
    table.validation = _validation(table, space, archs, measured, runtime, seed, "in a session of their own")
    return table.validation


def _validation(table: LatencyTable, space: SearchSpace, archs: Sequence[Sequence[int]], measured: Sequence[float],
                runtime: Runtime, seed: int, timed: str) -> dict[str, Any]:  # fmt: skip
    """The prediction's median absolute percentage error and Kendall tau against ``measured``, and the plain sum's."""
    predicted = [table.predict(space, a) for a in archs]
    sums = [table.block_sum(space, a) for a in archs]
    return {
        "archs": len(archs),
        "seed": seed,
        "timed": timed,
        "mdape_percent": mdape(predicted, measured),
        "kendall_tau": kendall_tau(predicted, measured),
        "sum_only": {
            "mdape_percent": mdape(sums, measured),
            "kendall_tau": kendall_tau(sums, measured),
        },
        "measured_ms": {"min": min(measured), "median": statistics.median(measured), "max": max(measured)},
        "runtime": f"{runtime.name} {runtime.version}",
        "rows": [
            {"arch": space.format_arch(a), "predicted_ms": p, "measured_ms": m, "sum_ms": t}
            for a, p, m, t in zip(archs, predicted, measured, sums, strict=True)
        ],  # fmt: skip
    }
