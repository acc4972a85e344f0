"""Search spaces as data: grammar, architecture encoding, published FairNAS models and their costs."""

from __future__ import annotations

import re

import pytest
from conftest import load_space, tiny_space
from omegaconf import OmegaConf

from fairnas.models import ArchitectureError, BlockSpec, CostModel, SearchSpace, SearchSpaceError
from fairnas.models.blocks import InvertedResidualBlock, SkipBlock

# Paper Table 2 (388M/4.6M, 345M/4.5M, 321M/4.4M) as counted exactly: (MAdds, params) at 224x224,
# 1000 classes; the table to reproduce within 0.1% is 388.1M/4.651M, 345.3M/4.506M, 321.0M/4.398M.
PUBLISHED = {
    "fairnas_a": (388_122_848, 4_651_352),
    "fairnas_b": (345_297_632, 4_506_272),
    "fairnas_c": (321_024_992, 4_397_864),
}
TABLE = {"fairnas_a": (388.1e6, 4.651e6), "fairnas_b": (345.3e6, 4.506e6), "fairnas_c": (321.0e6, 4.398e6)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_fairnas_models_cost_what_the_paper_says(name):
    space = load_space("fairnas_imagenet")
    cost = CostModel.create(space)
    madds, params = PUBLISHED[name]
    assert (cost.madds(space.archs[name]), cost.params(space.archs[name])) == (madds, params)
    assert madds == pytest.approx(TABLE[name][0], rel=1e-3) and params == pytest.approx(TABLE[name][1], rel=1e-3)


def test_imagenet_space_shape():
    space = load_space("fairnas_imagenet")
    assert (space.num_layers, space.num_choices) == (19, 6)
    assert [str(c) for c in space.searchable_layers[0].choices] == [
        "ir_k3_e3",
        "ir_k3_e6",
        "ir_k5_e3",
        "ir_k5_e6",
        "ir_k7_e3",
        "ir_k7_e6",
    ]
    # The fixed MBE1 block before the searchable layers.
    assert not space.layers[0].searchable and str(space.layers[0].choices[0]) == "ir_k3_e1"
    assert space.head_channels == 1280 and space.dropout == 0.2


@pytest.mark.parametrize("name", ["fairnas_imagenet", "fairnas_cifar", "fairnas_mini"])
def test_shipped_spaces_round_trip_through_to_dict(name):
    space = load_space(name)
    again = SearchSpace.create(**space.to_dict())
    assert again == space


def test_mini_space_varies_depth_and_width():
    space = load_space("fairnas_mini")
    assert space.num_layers >= 8 and space.num_choices >= 6
    names = {str(c) for c in space.searchable_layers[0].choices}
    assert "skip" in names and any(c.endswith("_e1") for c in names) and any(c.endswith("_e6") for c in names)
    low, high = CostModel.create(space).range_madds()
    assert high > 5 * low  # architectures differ a lot in cost, not only in kernel size


def test_arch_accepts_every_documented_form():
    space = load_space("fairnas_imagenet")
    a = space.archs["fairnas_a"]
    text = space.format_arch(a)
    assert space.parse_arch(text) == a
    assert space.parse_arch(list(a)) == a
    assert space.parse_arch(OmegaConf.to_container(OmegaConf.create({"x": list(a)}))["x"]) == a
    assert space.parse_arch("fairnas_a") == a
    assert space.parse_arch("[" + ",".join(map(str, a)) + "]") == a
    assert space.parse_arch(space.describe_arch(a)) == a


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1-2", "has 2 entries but space 'tiny' has 3 searchable layers"),
        ("0-3-1", "layer 1: choice 3 is out of range; allowed 0..2"),
        ([0, -1, 0], "layer 1: choice -1 is out of range"),
        ("fairnas_z", "cannot read architecture 'fairnas_z'"),
        ("hello world", "give 3 choice indices in 0..2"),
        (["ir_k3_e1", "ir_k9_e9", "skip"], "layer 1: block 'ir_k9_e9' is not a choice here"),
        ([0, 1.5, 0], "layer 1: choice 1.5 is out of range"),
        (None, "expected a string or a list"),
        ([True, False, True], "layer 0: True is a boolean, not a choice index"),
    ],
)
def test_bad_architectures_get_one_clear_error(value, message):
    with pytest.raises(ArchitectureError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tiny_space().parse_arch(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("ir_k3_e6", InvertedResidualBlock(3, 6)), ("skip", SkipBlock()), ("ir_k7_e1", InvertedResidualBlock(7, 1))],
)
def test_block_grammar(text, expected):
    assert BlockSpec.parse(text) == expected and str(expected) == text


@pytest.mark.parametrize("text", ["ir_k4_e6", "ir_k3", "conv3x3", "ir_k3_e0", ""])
def test_block_grammar_rejects_garbage(text):
    with pytest.raises(SearchSpaceError, match="block"):
        BlockSpec.parse(text)


def test_space_validation_errors():
    base = dict(name="bad", stem={"out": 8}, choices=["ir_k3_e1", "skip"])
    with pytest.raises(SearchSpaceError, match="'skip' needs stride 1"):
        SearchSpace.create(**base, stages=[{"out": 8, "layers": 1, "stride": 2}])
    with pytest.raises(SearchSpaceError, match="same number of choices"):
        SearchSpace.create(
            **base,
            stages=[{"out": 8, "layers": 1}, {"out": 8, "layers": 1, "choices": ["ir_k3_e1", "ir_k3_e3", "skip"]}],
        )
    with pytest.raises(SearchSpaceError, match="expected keys"):
        SearchSpace.create(**base, stages=[{"out": 8, "layer": 2}])


def _tiny_fields(**changes):
    fields = dict(
        name="tiny", input_size=8, in_channels=3, num_classes=4, stem={"out": 4, "kernel": 3, "stride": 1},
        choices=["ir_k3_e1", "ir_k3_e2", "skip"], head={"channels": 8, "dropout": 0.0},
        stages=[{"out": 4, "layers": 2, "stride": 1}, {"out": 8, "layers": 1, "stride": 2, "choices": ["ir_k3_e2"]}],
    )  # fmt: skip
    for key, value in changes.items():
        target, *path = key.split(".")
        if not path:
            fields[target] = value
            continue
        part = fields[target]
        for p in path[:-1]:
            part = part[int(p)] if isinstance(part, list) else part[p]
        part[path[-1]] = value
    return fields


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages.1.stride": 0}, "stages[1].stride must be a whole number >= 1, got 0"),
        ({"stages.1.stride": -2}, "stages[1].stride must be a whole number >= 1, got -2"),
        ({"stem.stride": 0}, "stem.stride must be a whole number >= 1"),
        ({"head.dropout": 1.0}, "head.dropout is a probability in [0, 1), got 1.0"),
        ({"head.dropout": -0.1}, "head.dropout is a probability in [0, 1), got -0.1"),
        ({"stages.0.out": -4}, "stages[0].out must be a whole number >= 1, got -4"),
        ({"stem.out": -4}, "stem.out must be a whole number >= 1, got -4"),
        ({"head.channels": -8}, "head.channels must be a whole number >= 1, got -8"),
        ({"num_classes": 1}, "num_classes must be a whole number >= 2, got 1"),
        ({"stages.0.layers": -1}, "stages[0].layers must be a whole number >= 1, got -1"),
        ({"stages.0.layers": True}, "stages[0].layers must be a whole number >= 1, got True"),
        ({"stages.0.layers": 1.5}, "stages[0].layers must be a whole number >= 1, got 1.5"),
        ({"stem.kernel": 4}, "stem.kernel must be odd (as block kernels are), got 4"),
        ({"input_size": "big"}, "input_size must be a whole number >= 1, got 'big'"),
    ],
)
def test_impossible_space_settings_are_refused(change, message):
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        SearchSpace.create(**_tiny_fields(**change))


def test_the_space_fields_of_the_tests_build_a_space():
    assert SearchSpace.create(**_tiny_fields()).num_layers == 2  # the baseline of the cases above is valid
