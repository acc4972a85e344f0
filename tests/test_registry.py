"""The open block registry: built-in kinds, a kind registered from outside the package, errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import yaml
from conftest import ROOT, load_space, run_entry
from custom_blocks import PlainConvBlock
from torch.utils.flop_counter import FlopCounterMode

from fairnas.models import BlockSpec, CostModel, SearchSpace, SearchSpaceError, Supernet, build_child, register_block
from fairnas.models.blocks import IdentityOrProjectionBlock, InvertedResidualBlock, SkipBlock
from fairnas.samplers import StrictFairSampler


def custom_space_fields(blocks: list[str]) -> dict:
    return dict(
        name="custom",
        input_size=8,
        in_channels=3,
        num_classes=4,
        stem={"out": 4, "kernel": 3, "stride": 1},
        choices=["conv_k3_g1", "conv_k5_g4", "ir_k3_e2", "id"],
        stages=[{"out": 4, "layers": 2, "stride": 1}, {"out": 8, "layers": 2, "stride": 2}],
        head={"channels": 8},
        blocks=blocks,
    )


def test_builtin_kinds_own_their_grammar():
    assert BlockSpec.parse("ir_k5_e6") == InvertedResidualBlock(5, 6)
    assert BlockSpec.parse(" skip ") == SkipBlock()
    assert BlockSpec.parse("id") == IdentityOrProjectionBlock()
    assert [str(b) for b in (InvertedResidualBlock(7, 1), SkipBlock(), IdentityOrProjectionBlock())] == [
        "ir_k7_e1",
        "skip",
        "id",
    ]


def test_unknown_block_lists_the_registered_kinds():
    with pytest.raises(SearchSpaceError) as error:
        BlockSpec.parse("sep_conv_3x3")
    message = str(error.value)
    assert "unknown block 'sep_conv_3x3'" in message
    for template in ("'ir_k{kernel}_e{expansion}' (e.g. 'ir_k3_e6')", "'skip'", "'id'", "'conv_k{kernel}_g{groups}'"):
        assert template in message
    assert "blocks:" in message


def test_identity_or_projection_is_identity_only_where_the_shape_is_kept():
    block = IdentityOrProjectionBlock()
    assert block.is_identity(8, 8, 1) and block.residual(8, 8, 1) and block.cost(16, 8, 8, 1) == (0, 0)
    assert isinstance(block.build(8, 8, 1, "relu"), torch.nn.Identity)
    projection = block.build(8, 16, 2, "relu")
    conv, bn = projection
    assert (conv.kernel_size, conv.stride, conv.bias, bn.num_features) == ((1, 1), (2, 2), None, 16)
    # 8x8 output of a 1x1 conv 8 -> 16: 64 * 128 madds; 128 weights + 32 BN parameters.
    assert (
        block.cost(16, 8, 16, 2) == (64 * 128, 128 + 32) == (64 * 128, sum(p.numel() for p in projection.parameters()))
    )
    assert not block.is_identity(8, 16, 2) and not block.residual(8, 16, 2)
    assert SkipBlock().check(8, 16, 2) is not None and block.check(8, 16, 2) is None


def test_a_kind_from_outside_the_package_is_named_in_the_space_and_trains_in_a_supernet():
    space = SearchSpace.create(**custom_space_fields(["custom_blocks.PlainConvBlock"]))
    assert space.searchable_layers[0].choices[:2] == (PlainConvBlock(3, 1), PlainConvBlock(5, 4))
    assert SearchSpace.create(**space.to_dict()) == space  # what checkpoints store names the kind too
    cost = CostModel.create(space)
    for arch in [(0, 1, 0, 1), (1, 0, 3, 2), (3, 3, 3, 3)]:
        child = build_child(space, arch)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            child.eval()(torch.randn(1, 3, 8, 8))
        assert counter.get_total_flops() == 2 * cost.madds(arch)
        assert sum(p.numel() for p in child.parameters()) == cost.params(arch)

    net = Supernet(space, seed=0)
    sampler = StrictFairSampler(space.num_layers, space.num_choices, seed=0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator)
    custom = net.choice_blocks(0)[1]
    before = [p.detach().clone() for p in custom.parameters()]
    losses = []
    for step in range(6):
        optimizer.zero_grad()
        paths = [arch for group in sampler.sample(step) for arch in group]
        loss = sum(torch.nn.functional.cross_entropy(net(x, arch), y) for arch in paths) / len(paths)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert any(not torch.equal(a, b) for a, b in zip(before, custom.parameters()))  # the custom block learned
    assert losses[-1] < losses[0]


def test_custom_kind_trains_through_train_py_from_a_config_dir_outside_the_package(tmp_path):
    config_dir = tmp_path / "conf"
    (config_dir / "search_space").mkdir(parents=True)
    fields = {"_target_": "fairnas.models.SearchSpace.create", "_convert_": "all"}
    fields.update(custom_space_fields(["custom_blocks.PlainConvBlock"]))
    (config_dir / "search_space" / "custom.yaml").write_text(yaml.safe_dump(fields))
    proc = run_entry(
        "train.py",
        f"--config-dir={config_dir}",
        "search_space=custom",
        "dataset=synthetic",
        "dataset.batch_size=16",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
        fresh=True,  # the block kind is imported from the user's PYTHONPATH, not registered by this process
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/acc_mean" in (tmp_path / "run" / "results.json").read_text()
    # search.py in a new interpreter: the checkpoint names the kind, but only the user's allow_blocks imports it
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    search = ["search.py", f"ckpt_path={ckpt}", "strategy=random", "strategy.num_samples=2", "evaluator.bn_batches=1"]
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    proc = run_entry(*search, f"hydra.run.dir={tmp_path / 's1'}", env=env, fresh=True)
    assert proc.returncode == 2 and "a checkpoint never imports code. If you trust that module, name it: " \
        "allow_blocks=[custom_blocks.PlainConvBlock]" in proc.stderr, proc.stderr[-3000:]  # fmt: skip
    proc = run_entry(*search, "allow_blocks=[custom_blocks.PlainConvBlock]", f"hydra.run.dir={tmp_path / 's2'}",
                     env=env, fresh=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("custom_blocks.NoSuchBlock", "cannot import block kind 'custom_blocks.NoSuchBlock'"),
        ("no_such_module.Block", "cannot import block kind 'no_such_module.Block'"),
        ("custom_blocks.nn", "is not a block kind"),
    ],
)
def test_bad_block_paths_get_one_clear_error(path, message):
    with pytest.raises(SearchSpaceError, match=message):
        SearchSpace.create(**custom_space_fields([path]))


def test_a_taken_kind_name_or_a_mismatched_template_is_refused():
    @dataclass(frozen=True)
    class Clash(BlockSpec):
        kind = "ir"
        template = "clash"

    @dataclass(frozen=True)
    class Mismatch(BlockSpec):
        kind = "mismatch"
        template = "mm_k{kernel}"

    with pytest.raises(TypeError, match="already registered"):
        register_block(Clash)
    with pytest.raises(TypeError, match="template 'mm_k{kernel}' names"):
        register_block(Mismatch)


def test_shipped_spaces_keep_their_costs_through_the_registry():
    # The built-in kinds cost what the conv/BN formulas say, layer by layer (independent recomputation).
    space = load_space("fairnas_mini")
    layer = space.searchable_layers[0]
    size, c = 14, layer.in_channels
    ir = InvertedResidualBlock(5, 6)
    hidden = c * 6
    expected = (
        size * size * (c * hidden + hidden * 25 + hidden * c),
        c * hidden + 2 * hidden + hidden * 25 + 2 * hidden + hidden * c + 2 * c,
    )
    assert ir.cost(size, c, c, 1) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+search_space.blocks=[no_such_module.Block]"], "cannot import block kind 'no_such_module.Block'"),
        (["search_space.choices=[skip,conv_k3_g1]"], "unknown block 'conv_k3_g1': the registered block kinds are"),
        (["dataset=cifar10_folder", "dataset.root=/nonexistent"], "no training folder /nonexistent/train"),
    ],
)
def test_bad_blocks_and_folders_on_the_command_line_get_one_clear_error(tmp_path, overrides, message):
    proc = run_entry("train.py", "trainer.max_steps=1", "logger=none", *overrides, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
