"""The search evaluator's shared-prefix pass (evaluate_many) against the straightforward reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import tiny_space

from fairnas.data import SyntheticDataModule
from fairnas.errors import ConfigError
from fairnas.models import CostModel, Supernet
from fairnas.search import DeviceBatches, ResultCache, SupernetEvaluator

CLASSES = 6  # more than 5: top-5 is measured too


def float64_evaluator(preload: bool = True, cache: ResultCache | None = None, chunk_size=3) -> SupernetEvaluator:
    """A float64 supernet whose running statistics are far from their reset values, on synthetic data."""
    net = Supernet(tiny_space(), num_classes=CLASSES, seed=0).double()
    g = torch.Generator().manual_seed(0)
    for arch in itertools.product(range(3), repeat=3):
        net(torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64), arch)  # BN statistics of a mix of paths
    dm = SyntheticDataModule(image_size=8, channels=3, num_classes=CLASSES, num_train=64, num_val=48, batch_size=8)
    dm.setup("fit")
    cpu = torch.device("cpu")
    calib = DeviceBatches(dm.calibration_dataloader(3, seed=0), None, cpu, preload)
    val = DeviceBatches(dm.val_dataloader(), None, cpu, preload)
    # Validation batches of 8 go through in chunks of 3, 3 and 2 images.
    return SupernetEvaluator(net.eval(), calib, val, CostModel.create(net.space), cache, chunk_size=chunk_size)


def test_the_shared_prefix_pass_equals_the_reference_exactly_in_float64():
    ev = float64_evaluator()
    state = {k: v.clone() for k, v in ev.supernet.state_dict().items()}
    buffers = {k: v.data_ptr() for k, v in ev.supernet.named_buffers()}
    archs = list(itertools.product(range(3), repeat=3))  # every path: shared prefixes, skips, the shortest and longest
    reference = [ev.evaluate_reference(a) for a in archs]
    assert len({r["loss"] for r in reference}) == len(archs)  # the paths really differ
    assert len({r["acc1"] for r in reference}) > 1
    order = archs[::-1] + archs[:5]  # another order, with repeats
    together = ev.evaluate_many(order)
    assert together[: len(archs)][::-1] == reference  # acc1, acc5 and the summed loss, bit for bit
    assert together[len(archs) :] == reference[:5]
    assert [ev.evaluate(a) for a in archs[:4]] == reference[:4]  # one at a time (no sharing) as well
    assert ev.evaluations == len(archs) + 4
    for k, v in ev.supernet.state_dict().items():  # the supernet's statistics are back, in their own tensors
        assert torch.equal(v, state[k]), k
    assert {k: v.data_ptr() for k, v in ev.supernet.named_buffers()} == buffers
    assert all(not m.training for m in ev.supernet.modules())
    # Chunks of 3 stay on where this machine's float64 kernels give chunked logits identical to whole-batch
    # ones, and are switched off where they do not (seen on some CPUs): the results above are exact either way.
    x = ev._batch(next(iter(ev.validation))[0])  # as the evaluator feeds it (dtype, memory format)
    with torch.no_grad():
        same = all(
            torch.equal(ev.supernet(x, a), torch.cat([ev.supernet(x[i : i + 3], a) for i in range(0, len(x), 3)]))
            for a in archs
        )
    assert ev.chunk_size == (3 if same else None)


def test_batch_dependent_logits_turn_chunking_off_and_stay_exact(monkeypatch):
    ev = float64_evaluator()
    head = type(ev.supernet.head).forward
    monkeypatch.setattr(type(ev.supernet.head), "forward", lambda self, x: head(self, x) + x.mean())  # across images
    archs = [(0, 1, 2), (1, 1, 0)]
    reference = [ev.evaluate_reference(a) for a in archs]
    assert ev.evaluate_many(archs) == reference
    assert ev.chunk_size is None
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        float64_evaluator(chunk_size=0)


def test_streamed_batches_and_the_cache_give_the_reference_numbers(tmp_path):
    archs = [(0, 1, 2), (0, 1, 0), (0, 2, 2), (2, 2, 2)]
    reference = [float64_evaluator().evaluate_reference(a) for a in archs]
    streamed = float64_evaluator(preload=False, cache=ResultCache(tmp_path / "c.jsonl", {}))
    assert [streamed.result(a)["acc1"] for a in archs[:1]] == [reference[0]["acc1"]]
    records = streamed.results(archs + archs[:2])
    assert [{k: r[k] for k in reference[0]} for r in records[:4]] == reference
    assert records[4:] == records[:2] and streamed.evaluations == 4  # each evaluated once, cached ones not again
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 1 + 4  # header + one line per architecture
