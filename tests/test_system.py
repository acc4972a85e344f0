"""The fair step inside Lightning: exact gradients, one optimizer and scheduler step, BN handling."""

from __future__ import annotations

import copy
import math
import re
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import tiny_space
from pytorch_lightning.plugins import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from fairnas.data import SyntheticDataModule
from fairnas.models import Supernet, build_child
from fairnas.models.bn import bn_layers, get_stats, recalibrate
from fairnas.samplers import BiasedSampler, StrictFairSampler, UniformSampler
from fairnas.system import StandaloneSystem, SupernetSystem, cosine_with_warmup


def data(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)
    )


def fit(system, data, **kw):
    args = dict(
        accelerator="cpu",
        devices=1,
        precision="64-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer = pl.Trainer(**{**args, **kw})
    if isinstance(data, pl.LightningDataModule):
        trainer.fit(system, datamodule=data)
    else:
        trainer.fit(system, data)
    return trainer


def make(sampler=None, lr=0.0, **kw):
    torch.manual_seed(0)
    space = tiny_space()
    net = Supernet(space).double()
    sampler = sampler or StrictFairSampler(space.num_layers, space.num_choices, seed=0)
    return SupernetSystem(net, sampler, optimizer=partial(torch.optim.SGD, lr=lr), val_archs=3, **kw)


def path_grads(net, arch, x, y):
    net = copy.deepcopy(net)
    net.zero_grad()
    F.cross_entropy(net(x, arch), y).backward()
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in net.named_parameters()}


@pytest.mark.parametrize("mode", ["per_path", "fused"])
@pytest.mark.parametrize(("reduction", "split", "batch"), [("sum", False, 12), ("mean", False, 12), ("sum", True, 10)])
def test_fair_step_gradient_is_the_sum_of_the_m_path_gradients(reduction, split, batch, mode):
    system = make(grad_reduction=reduction, split_batch=split, step_mode=mode)
    initial = copy.deepcopy(system.supernet)
    x, y = data(batch).tensors
    fit(system, DataLoader(TensorDataset(x, y), batch_size=batch), max_steps=1, limit_val_batches=0)
    paths = system.sampler.sample(0)[0]
    # split: chunks of 4, 3, 3 samples for a batch of 10
    chunks = list(zip(x.tensor_split(3), y.tensor_split(3))) if split else [(x, y)] * 3
    expected = {n: torch.zeros_like(p) for n, p in initial.named_parameters()}
    for arch, (xk, yk) in zip(paths, chunks):
        for n, g in path_grads(initial, arch, xk, yk).items():
            expected[n] += g / (3 if reduction == "mean" else 1)
    for n, p in system.supernet.named_parameters():
        assert p.grad is not None, f"{n} got no gradient: strict fairness must reach every block"
        torch.testing.assert_close(p.grad, expected[n], rtol=0, atol=1e-12, msg=n)


def test_one_path_alone_leaves_most_blocks_without_gradient():
    system = make()
    g = path_grads(system.supernet, (0, 0, 0), *data(4).tensors)
    untouched = [n for n, v in g.items() if n.startswith("layers.0.1") and v.abs().sum() == 0]
    assert untouched  # why a fair step needs all m paths before the update


def test_sf_is_one_update_per_batch_and_ef_one_per_path():
    sf = make(lr=0.01)
    assert fit(sf, DataLoader(data(16), batch_size=8), max_epochs=1, limit_val_batches=0).global_step == 2
    assert (sf.block_usage == 2).all() and sf.fairness_spread == 0
    space = tiny_space()
    ef = make(UniformSampler(space.num_layers, space.num_choices, seed=0), lr=0.01)
    assert fit(ef, DataLoader(data(16), batch_size=8), max_epochs=1, limit_val_batches=0).global_step == 6
    assert (ef.block_usage.sum(1) == 6).all()


def test_unfair_sampling_shows_in_the_usage_counts():
    space = tiny_space()
    biased = make(BiasedSampler(space.num_layers, space.num_choices, seed=0, probs=[8, 1, 1]), lr=0.01)
    fit(biased, DataLoader(data(64), batch_size=8), max_epochs=1, limit_val_batches=0)
    assert biased.fairness_spread > 0
    assert (biased.block_usage[:, 0] > biased.block_usage[:, 1:].max(1).values).all()


def test_scheduler_steps_once_per_optimizer_step():
    system = SupernetSystem(
        Supernet(tiny_space()).double(),
        UniformSampler(3, 3, seed=0),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=partial(cosine_with_warmup, warmup_fraction=0.25),
        val_archs=1,
    )
    trainer = fit(system, DataLoader(data(16), batch_size=4), max_steps=8, limit_val_batches=0)
    assert trainer.global_step == 8  # 3 optimizer steps per batch, stopped at 8 in the middle of the 3rd batch
    # total horizon = 8 steps, 2 warm-up steps; after 8 scheduler steps the cosine reached 0
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (8 - 2) / 6)), abs=1e-12)
    assert system.lr_schedulers().last_epoch == 8


def test_validation_recalibrates_bn_per_architecture_and_restores_the_supernet():
    system = make(lr=0.05)
    dm = SyntheticDataModule(image_size=8, channels=3, num_classes=4, num_train=32, num_val=16, batch_size=8)
    trainer = fit(system, dm, max_epochs=1)
    before = get_stats(bn_layers([system.supernet]))
    metrics = trainer.validate(system, datamodule=dm, verbose=False)[0]
    after = get_stats(bn_layers([system.supernet]))
    for a, b in zip(before, after):
        for u, v in zip(a, b):
            assert torch.equal(u, v)
    # Each architecture evaluated as its own network, recalibrated on the same training batches.
    calib = [x.double() for x, _ in dm.calibration_dataloader(system.val_bn_batches, seed=system.val_seed)]
    accs = []
    for arch in system.eval_archs:
        child = system.supernet.export(arch).eval()
        recalibrate(child, bn_layers([child]), calib)
        with torch.no_grad():
            hits = [(child(x.double()).argmax(1) == y).sum() for x, y in dm.val_dataloader()]
        accs.append(float(sum(hits)) / len(dm.val_dataset))
    assert metrics["val/acc_mean"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert metrics["val/acc_min"] == pytest.approx(min(accs), abs=1e-6)
    assert metrics["val/acc_max"] == pytest.approx(max(accs), abs=1e-6)


def test_validation_and_the_search_evaluator_give_the_same_accuracies():
    from fairnas.models import CostModel
    from fairnas.search import SupernetEvaluator, materialise

    system = make(lr=0.3)
    dm = SyntheticDataModule(image_size=8, channels=3, num_classes=4, num_train=64, num_val=40, batch_size=8)
    trainer = fit(system, dm, max_epochs=2)
    metrics = trainer.validate(system, datamodule=dm, verbose=False)[0]
    calibration = materialise(
        dm.calibration_dataloader(system.val_bn_batches, seed=system.val_seed), None, system.device
    )
    evaluator = SupernetEvaluator(system.supernet, calibration, materialise(dm.val_dataloader(), None, system.device),
                                  CostModel.create(system.supernet.space))  # fmt: skip
    accs = evaluator.accuracy(system.eval_archs)
    assert len(set(accs)) > 1, "the check needs architectures that score differently"
    assert (metrics["val/acc_min"], metrics["val/acc_max"]) == pytest.approx((min(accs), max(accs)), abs=1e-7)
    assert metrics["val/acc_mean"] == pytest.approx(np.mean(accs), abs=1e-7)


def test_gradients_are_clipped_once_per_optimizer_step():
    system = make(lr=0.0, grad_clip=1e-3)
    fit(system, DataLoader(data(8), batch_size=8), max_steps=1, limit_val_batches=0)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in system.supernet.parameters()]))
    assert norm == pytest.approx(1e-3, rel=1e-6)


def test_bn_recalibration_equals_statistics_of_the_exported_network():
    torch.manual_seed(0)
    space = tiny_space()
    net = Supernet(space).double().eval()
    arch = (1, 0, 1)
    batches = [t[0] for t in DataLoader(data(24), batch_size=8)]
    stats = recalibrate(lambda x: net(x, arch), bn_layers(net.path_modules(arch)), batches)
    child = Supernet(space).double()
    child.load_state_dict(net.state_dict())
    child = child.export(arch)
    child.train()
    for m in bn_layers([child]):
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        for x in batches:
            child(x)
    direct = get_stats(bn_layers([child]))
    assert len(direct) == len(stats)
    for (m1, v1, _), (m2, v2, _) in zip(stats, direct):
        torch.testing.assert_close(m1, m2)
        torch.testing.assert_close(v1, v2)
    # the mean over all calibration images, not a moving average
    first = bn_layers([child])[0]
    stem_out = child.stem[0](torch.cat(batches))
    torch.testing.assert_close(first.running_mean, stem_out.mean((0, 2, 3)))


def test_standalone_system_trains_only_its_blocks():
    space = tiny_space()
    torch.manual_seed(0)
    net = build_child(space, (1, 1, 0)).double()
    start = copy.deepcopy(net.state_dict())
    system = StandaloneSystem(net, optimizer=partial(torch.optim.SGD, lr=0.1))
    trainer = fit(system, DataLoader(data(16), batch_size=8), max_epochs=2)
    assert trainer.global_step == 4
    assert all(not torch.equal(start[n], p) for n, p in net.named_parameters())
    metrics = trainer.validate(system, DataLoader(data(8), batch_size=8), verbose=False)[0]
    x, y = data(8).tensors
    with torch.no_grad():
        logits = net.eval()(x)  # the trained net, by hand
    assert metrics["val/acc"] == pytest.approx((logits.argmax(1) == y).double().mean().item(), abs=1e-7)
    assert metrics["val/loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-9)


def test_sampler_and_space_must_agree():
    with pytest.raises(ValueError, match="the sampler draws 4 layers x 3 choices"):
        SupernetSystem(Supernet(tiny_space()), StrictFairSampler(4, 3), optimizer=torch.optim.SGD)


def test_val_archs_are_fixed_by_their_seed():
    a, b, c = make(), make(), make(val_seed=1)
    assert a.eval_archs == b.eval_archs != c.eval_archs
    assert np.array(a.eval_archs).max() < tiny_space().num_choices


def test_the_calibration_images_have_a_seed_of_their_own():
    """val_seed picks the validation architectures, calibration_seed the images that re-estimate their BN
    statistics; without calibration_seed (a checkpoint's system settings from before it) val_seed picks both."""
    picked = []

    class Recorder(SyntheticDataModule):
        def calibration_dataloader(self, num_batches, seed, batch_size=None):
            picked.append(seed)
            return super().calibration_dataloader(num_batches, seed, batch_size)

    for kw in ({"val_seed": 1, "calibration_seed": 5}, {"val_seed": 1, "calibration_seed": 0}, {"val_seed": 3}):
        system = make(val_bn_batches=1, **kw)
        dm = Recorder(8, 3, 4, num_train=32, num_val=8, batch_size=8)
        trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                             precision="64-true")  # fmt: skip
        trainer.validate(system, datamodule=dm, verbose=False)
    assert picked == [5, 0, 3]
    assert make(val_seed=1, calibration_seed=5).eval_archs == make(val_seed=1, calibration_seed=0).eval_archs


def test_a_nonfinite_update_is_skipped_and_counted_under_the_skip_policy():
    system = make(lr=0.1, nonfinite="skip")
    x, y = data(16).tensors
    x[:8] = float("nan")  # the first batch poisons every path's loss
    start = copy.deepcopy(system.supernet.state_dict())
    with pytest.warns(UserWarning, match="update skipped"):
        trainer = fit(system, DataLoader(TensorDataset(x, y), batch_size=8), max_epochs=1, limit_val_batches=0)
    assert int(system.nonfinite_steps) == 1 and trainer.global_step == 1  # only the clean batch stepped
    assert (system.block_usage == 1).all()  # usage counts only applied updates
    params = dict(system.supernet.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    assert any(not torch.equal(start[n], p) for n, p in params.items())


def test_nonfinite_policy_is_validated():
    with pytest.raises(ValueError, match="system.nonfinite must be one of"):
        make(nonfinite="ignore")


def test_step_mode_is_validated():
    with pytest.raises(ValueError, match=r"system.step_mode must be one of \('per_path', 'fused'\)"):
        make(step_mode="fast")


def test_a_skipped_update_leaves_the_bn_statistics_as_they_were():
    system = make(lr=0.1, nonfinite="skip")
    before = get_stats(bn_layers([system.supernet]))
    x, y = data(8).tensors
    x[:] = float("inf")
    with pytest.warns(UserWarning, match="update skipped"):
        fit(system, DataLoader(TensorDataset(x, y), batch_size=8), max_epochs=1, limit_val_batches=0)
    for a, b in zip(before, get_stats(bn_layers([system.supernet]))):
        for u, v in zip(a, b):
            assert torch.equal(u, v)


@pytest.mark.parametrize("system_class", ["supernet", "standalone"])
def test_channels_last_trains_to_the_same_weights_as_contiguous(system_class):
    # The layout is a speed option only: in float64 both layouts reach the same weights, and the
    # weights and batches really are in the layout asked for.
    trained, seen = {}, {}
    for fmt in ("contiguous", "channels_last"):
        if system_class == "supernet":
            system = make(lr=0.1, memory_format=fmt)
            net = system.supernet
        else:
            torch.manual_seed(0)
            net = build_child(tiny_space(), (1, 1, 0)).double()
            system = StandaloneSystem(net, optimizer=partial(torch.optim.SGD, lr=0.1), memory_format=fmt)
        conv = next(p for p in net.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1)
        seen[fmt] = conv.is_contiguous(memory_format=torch.channels_last)
        x, _ = system._inputs(data(4).tensors)
        assert x.is_contiguous(memory_format=torch.channels_last) == (fmt == "channels_last")
        fit(system, DataLoader(data(16), batch_size=8), max_epochs=1, limit_val_batches=0)
        trained[fmt] = {n: p.detach().contiguous() for n, p in net.named_parameters()}
    assert seen == {"contiguous": False, "channels_last": True}
    torch.testing.assert_close(trained["channels_last"], trained["contiguous"], rtol=1e-9, atol=1e-12)


def test_an_unknown_memory_format_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"memory_format must be one of \['channels_last', 'contiguous'\], got 'nhwc'"):
        make(memory_format="nhwc")


def test_gradients_are_clipped_after_unscaling_under_fp16_mixed_precision():
    # With a grad scaler the shared-norm path is off: Lightning unscales, then the hook clips once.
    torch.manual_seed(0)
    space = tiny_space()
    system = SupernetSystem(
        Supernet(space), StrictFairSampler(space.num_layers, space.num_choices, seed=0),
        optimizer=partial(torch.optim.SGD, lr=0.0), val_archs=1, grad_clip=1e-3,
    )  # fmt: skip
    x, y = data(8).tensors
    fit(system, DataLoader(TensorDataset(x.float(), y), batch_size=8), max_steps=1, limit_val_batches=0,
        precision=None, plugins=[MixedPrecision("16-mixed", "cpu")])  # fmt: skip
    assert system._scaler() is not None
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in system.supernet.parameters()]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-3)


def test_a_negative_grad_clip_is_refused():
    with pytest.raises(
        ValueError, match=r"system.grad_clip must be a max gradient norm > 0 \(0 or null: off\), got -1"
    ):
        make(grad_clip=-1.0)


def test_shared_norm_clipping_is_bit_identical_to_lightnings_clip(monkeypatch):
    # The NaN check's norm, reused for clipping, must equal what Lightning's clip_gradients computes
    # (the optimizer's parameter order, float32), so the optimisation is invisible in the weights.
    x, y = data(16).tensors
    weights = []
    for shared in (True, False):
        monkeypatch.setattr(SupernetSystem, "_shared_norm", lambda self, s=shared: s and self._scaler() is None)
        torch.manual_seed(0)
        space = tiny_space()
        system = SupernetSystem(
            Supernet(space), StrictFairSampler(space.num_layers, space.num_choices, seed=0),
            optimizer=partial(torch.optim.SGD, lr=0.5, momentum=0.9), val_archs=1, grad_clip=1e-2,
        )  # fmt: skip
        fit(system, DataLoader(TensorDataset(x.float(), y), batch_size=8), max_steps=2, limit_val_batches=0,
            precision="32-true")  # fmt: skip
        weights.append({n: p.detach().clone() for n, p in system.supernet.named_parameters()})
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])


def _poison_bn_at_batch(system, batch: int):
    """From training batch ``batch`` on, every forward leaves an inf running variance in one BN layer while
    the loss and the gradients stay finite (as with overflowing activations that BN normalises away)."""
    bn = bn_layers([system.supernet])[0]
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training and system.trainer.fit_loop.batch_idx >= batch:
            calls["n"] += 1
            module.running_var.data.fill_(float("inf"))  # .data: not part of the autograd graph

    bn.register_forward_hook(hook)
    return calls


def test_nonfinite_bn_statistics_with_finite_gradients_count_as_a_nonfinite_update():
    system = make(lr=0.1, nonfinite="skip")
    calls = _poison_bn_at_batch(system, batch=1)
    with pytest.warns(UserWarning, match="a BatchNorm running statistic became NaN/inf at step 1: update skipped"):
        trainer = fit(system, DataLoader(data(16), batch_size=8), max_epochs=1, limit_val_batches=0)
    assert calls["n"] > 0 and int(system.nonfinite_steps) == 1 and trainer.global_step == 1
    assert all(torch.isfinite(b).all() for b in system.supernet.buffers() if b.is_floating_point())


def test_the_stop_policy_saves_only_a_finite_state_as_last_good(tmp_path):
    from fairnas.errors import NonFiniteLossError

    system = make(lr=0.1)
    _poison_bn_at_batch(system, batch=1)
    with pytest.raises(NonFiniteLossError, match="BatchNorm running statistic became NaN/inf at step 1"):
        fit(system, DataLoader(data(16), batch_size=8), max_epochs=1, limit_val_batches=0, default_root_dir=tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "last_good.ckpt", weights_only=True)
    assert saved["global_step"] == 1
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())
    momentum = [t for s in saved["optimizer_states"][0]["state"].values() for t in s.values()]
    assert all(torch.isfinite(t).all() for t in momentum if isinstance(t, torch.Tensor) and t.is_floating_point())


def test_a_state_that_is_already_nonfinite_is_never_saved_as_good(tmp_path):
    from fairnas.errors import NonFiniteLossError

    system = make(lr=0.1)
    name, var = next((n, b) for n, b in system.named_buffers() if n.endswith("running_var"))
    var[0] = float("inf")  # e.g. from steps before this check existed, or from a resumed checkpoint
    with pytest.raises(NonFiniteLossError, match=rf"not finite either \(1 tensors: {re.escape(name)}\)"):
        fit(system, DataLoader(data(8), batch_size=8), max_epochs=1, limit_val_batches=0, default_root_dir=tmp_path)
    assert not (tmp_path / "checkpoints" / "last_good.ckpt").exists()


def test_nonfinite_state_names_weights_buffers_and_optimizer_state():
    from fairnas.system.nonfinite import nonfinite_state

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 2)).sum().backward()
    optimizer.step()
    assert nonfinite_state(net, optimizer) == []
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    net[1].running_var[1] = float("inf")
    optimizer.state[net[0].bias]["momentum_buffer"][0] = float("-inf")
    assert nonfinite_state(net, optimizer) == ["0.weight", "1.running_var", "optimizer.state[1].momentum_buffer"]


def test_dropout_masks_follow_the_step_even_with_a_bare_trainer():
    # The system attaches its step seed itself: whatever drew from torch's global generator before
    # fit, the dropout masks (and so the trained weights) are the same.
    def trained(global_seed: int) -> dict[str, torch.Tensor]:
        space = tiny_space(dropout=0.5)
        sampler = StrictFairSampler(space.num_layers, space.num_choices, seed=0)
        system = SupernetSystem(
            Supernet(space, seed=0).double(), sampler, optimizer=partial(torch.optim.SGD, lr=0.1), val_archs=0
        )
        torch.manual_seed(global_seed)
        fit(system, DataLoader(data(), batch_size=8), max_steps=2)
        return system.supernet.state_dict()

    first, second = trained(1), trained(2)
    assert all(torch.equal(first[k], second[k]) for k in first)
    head = [k for k in first if "classifier" in k and k.endswith("weight")]
    assert head and not torch.equal(
        first[head[0]], Supernet(tiny_space(dropout=0.5), seed=0).double().state_dict()[head[0]]
    )
