"""Search spaces as data.

A search space is described in YAML (see ``conf/search_space/``) and parsed here into frozen
dataclasses. This module imports no torch at import time: samplers and search strategies can
use it freely (parsing a space loads the built-in block kinds, whose modules use torch).

Block grammar (one string per candidate block), owned by the registered block kinds
(:mod:`fairnas.models.registry`; built-in ones in :mod:`fairnas.models.blocks`):

* ``ir_k{K}_e{E}``: MobileNetV2 inverted residual, depthwise kernel K, expansion ratio E.
  ``E == 1`` drops the 1x1 expansion (a depthwise-separable block). A residual connection is
  added when the stride is 1 and input and output channels match.
* ``skip``: identity. Only valid where the layer keeps the shape (stride 1, same channels); a
  space with ``skip`` choices has variable depth.
* ``id``: identity where the layer keeps the shape, a 1x1 conv + BN projection where it does not
  (NAS-Bench-Macro's identity choice).
* any kind of your own, registered from your module and named in the space's ``blocks:`` list.

An architecture is a tuple with one choice index per *searchable* layer (layers with more than
one candidate), printed and parsed as a '-'-joined string such as ``4-0-4-1``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fairnas.arch import Arch, format_arch
from fairnas.errors import ArchitectureError
from fairnas.models.registry import BlockSpec, SearchSpaceError, import_block

ACTIVATIONS = ("relu", "relu6", "silu", "hardswish")


def _whole(where: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; booleans, fractions and text are refused, not coerced."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SearchSpaceError(f"{where} must be a whole number >= {minimum}, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise SearchSpaceError(f"{where} must be a whole number >= {minimum}, got {value!r}") from None
    if number != float(value) or number < minimum:
        raise SearchSpaceError(f"{where} must be a whole number >= {minimum}, got {value!r}")
    return number


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the body: its shape and its candidate blocks."""

    in_channels: int
    out_channels: int
    stride: int
    choices: tuple[BlockSpec, ...]

    @property
    def searchable(self) -> bool:
        return len(self.choices) > 1


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search space: stem, layers (fixed and searchable), head, and named architectures.

    Build one with :meth:`create` (the Hydra ``_target_``) from the YAML fields, and turn it back
    into those fields with :meth:`to_dict` (this is what checkpoints store).
    """

    name: str
    input_size: int
    in_channels: int
    num_classes: int
    stem_channels: int
    stem_kernel: int
    stem_stride: int
    layers: tuple[LayerSpec, ...]
    head_channels: int | None
    dropout: float
    activation: str
    archs: Mapping[str, Arch] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def create(
        cls,
        name: str,
        stem: Mapping[str, Any],
        stages: Sequence[Mapping[str, Any]],
        choices: Sequence[str] | None = None,
        head: Mapping[str, Any] | None = None,
        input_size: int = 224,
        in_channels: int = 3,
        num_classes: int = 1000,
        activation: str = "relu6",
        archs: Mapping[str, Any] | None = None,
        description: str = "",
        blocks: Sequence[str] | None = None,
    ) -> SearchSpace:
        """Parses the YAML fields of a search space.

        Args:
            name: Name of the space (shown in logs and checkpoints).
            stem: ``{out: C, kernel: 3, stride: 2}``: the first convolution.
            stages: Each ``{out: C, layers: n, stride: s, choices: [...]}``; the first layer of a
                stage has stride ``s``, the others 1. ``choices`` defaults to the space-wide list;
                a stage with a single choice is fixed (not searched).
            choices: Default candidate blocks of a searchable layer.
            head: ``{channels: C or null, dropout: p}``: optional 1x1 conv, pooling, dropout, linear.
            input_size: Nominal input resolution (for costs and synthetic data).
            in_channels: Nominal input channels.
            num_classes: Nominal number of classes.
            activation: One of relu, relu6, silu, hardswish.
            archs: Named architectures, each a '-'-joined index string or a list of indices or
                block strings.
            description: Free text for humans.
            blocks: Import paths (``package.module.ClassName``) of block kinds of your own to
                register before the choices are parsed (see :mod:`fairnas.models.registry`).
        """
        del description
        for path in blocks or ():
            import_block(path)
        source = {
            "name": name,
            "stem": dict(stem),
            "stages": [dict(s) for s in stages],
            "choices": list(choices) if choices is not None else None,
            "head": dict(head or {}),
            "input_size": input_size,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "activation": activation,
            **({"blocks": [str(b) for b in blocks]} if blocks else {}),
            "archs": {
                k: (list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
                for k, v in (archs or {}).items()
            },
        }
        if activation not in ACTIVATIONS:
            raise SearchSpaceError(f"space {name!r}: unknown activation {activation!r}; use one of {ACTIVATIONS}")
        if "out" not in stem:
            raise SearchSpaceError(f"space {name!r}: the stem needs 'out' (its output channels)")
        where = f"space {name!r}:"
        stem_channels = _whole(f"{where} stem.out", stem["out"], 1)
        stem_kernel = _whole(f"{where} stem.kernel", stem.get("kernel", 3), 1)
        if stem_kernel % 2 == 0:
            raise SearchSpaceError(f"{where} stem.kernel must be odd (as block kernels are), got {stem_kernel}")
        stem_stride = _whole(f"{where} stem.stride", stem.get("stride", 1), 1)
        head = dict(head or {})
        head_channels = _whole(f"{where} head.channels", head["channels"], 1) if head.get("channels") else None
        dropout = head.get("dropout", 0.0)
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise SearchSpaceError(f"{where} head.dropout is a probability in [0, 1), got {dropout!r}")
        sizes = {
            "input_size": _whole(f"{where} input_size", input_size, 1),
            "in_channels": _whole(f"{where} in_channels", in_channels, 1),
            # One class cannot be classified: the loss is 0 and accuracy 100% whatever the weights.
            "num_classes": _whole(f"{where} num_classes", num_classes, 2),
        }
        default_choices = tuple(BlockSpec.parse(c) for c in choices) if choices else None
        layers: list[LayerSpec] = []
        channels = stem_channels
        if not stages:
            raise SearchSpaceError(f"space {name!r}: at least one stage is needed")
        for s_idx, stage in enumerate(stages):
            unknown = set(stage) - {"out", "layers", "stride", "choices"}
            if unknown or "out" not in stage:
                raise SearchSpaceError(
                    f"space {name!r}, stage {s_idx}: expected keys out, layers, stride, choices; got {sorted(stage)}"
                )
            stage_choices = (
                tuple(BlockSpec.parse(c) for c in stage["choices"]) if stage.get("choices") else default_choices
            )
            if not stage_choices:
                raise SearchSpaceError(f"space {name!r}, stage {s_idx}: no choices and no space-wide default")
            num_layers = _whole(f"{where} stages[{s_idx}].layers", stage.get("layers", 1), 1)
            stage_stride = _whole(f"{where} stages[{s_idx}].stride", stage.get("stride", 1), 1)
            out = _whole(f"{where} stages[{s_idx}].out", stage["out"], 1)
            for i in range(num_layers):
                stride = stage_stride if i == 0 else 1
                for block in stage_choices:
                    problem = block.check(channels, out, stride)
                    if problem:
                        raise SearchSpaceError(f"space {name!r}, stage {s_idx}, layer {i}: {problem}")
                layers.append(LayerSpec(channels, out, stride, stage_choices))
                channels = out
        searchable = [layer for layer in layers if layer.searchable]
        if len({len(layer.choices) for layer in searchable}) > 1:
            raise SearchSpaceError(
                f"space {name!r}: every searchable layer must have the same number of choices "
                f"(strict fairness trains each choice once per step); got {[len(x.choices) for x in searchable]}"
            )
        space = cls(
            name=name,
            **sizes,
            stem_channels=stem_channels,
            stem_kernel=stem_kernel,
            stem_stride=stem_stride,
            layers=tuple(layers),
            head_channels=head_channels,
            dropout=float(dropout),
            activation=activation,
            source=source,
        )
        named = {key: space.parse_arch(value, allow_names=False) for key, value in (archs or {}).items()}
        object.__setattr__(space, "archs", named)
        return space

    def to_dict(self) -> dict[str, Any]:
        """The YAML fields this space was created from (``SearchSpace.create(**d)`` rebuilds it)."""
        return {k: v for k, v in self.source.items()}

    @property
    def searchable_layers(self) -> tuple[LayerSpec, ...]:
        """The searchable layers, in order: an architecture has one choice index for each."""
        return tuple(layer for layer in self.layers if layer.searchable)

    @property
    def searchable_indices(self) -> tuple[int, ...]:
        """Where each searchable layer sits in ``layers`` (searchable layer k is ``layers[searchable_indices[k]]``)."""
        return tuple(i for i, layer in enumerate(self.layers) if layer.searchable)

    @property
    def num_layers(self) -> int:
        """Number of searchable layers L."""
        return len(self.searchable_layers)

    @property
    def num_choices(self) -> int:
        """Number of choices m of each searchable layer."""
        layers = self.searchable_layers
        return len(layers[0].choices) if layers else 1

    @property
    def size(self) -> int:
        """Number of architectures in the space."""
        return self.num_choices**self.num_layers

    def parse_arch(self, value: Any, allow_names: bool = True) -> Arch:
        """Turns any accepted form of an architecture into a validated index tuple.

        Accepted: a tuple/list of choice indices or block strings, a '-'-joined index string
        (``"4-0-4-1"``), or the name of a named architecture of this space (``"fairnas_a"``).

        Raises:
            ArchitectureError: naming the offending layer and the allowed range.
        """
        original = value
        if isinstance(value, str):
            text = value.strip()
            if allow_names and text in self.archs:
                return self.archs[text]
            if re.fullmatch(r"\d+(-\d+)*", text):
                value = [int(v) for v in text.split("-")]
            elif re.fullmatch(r"\[?\s*\d+(\s*,\s*\d+)*\s*\]?", text):
                value = [int(v) for v in text.strip("[] ").split(",")]
            else:
                known = ", ".join(sorted(self.archs)) or "none"
                raise ArchitectureError(
                    f"cannot read architecture {original!r} for space {self.name!r}: give {self.num_layers} "
                    f"choice indices in 0..{self.num_choices - 1} joined by '-' (e.g. "
                    f"{self.format_arch((0,) * self.num_layers)!r}), a list, or a known name ({known})"
                )
        elif isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, Sequence):
            raise ArchitectureError(f"cannot read architecture {original!r}: expected a string or a list")
        if len(value) != self.num_layers:
            raise ArchitectureError(
                f"architecture {original!r} has {len(value)} entries but space {self.name!r} has "
                f"{self.num_layers} searchable layers"
            )
        indices = []
        for i, (entry, layer) in enumerate(zip(value, self.searchable_layers, strict=True)):
            names = [str(c) for c in layer.choices]
            if isinstance(entry, bool):
                raise ArchitectureError(
                    f"architecture {original!r}, layer {i}: {entry!r} is a boolean, not a choice index "
                    f"(0..{len(layer.choices) - 1}) or block name"
                )
            if isinstance(entry, str) and not entry.strip().isdigit():
                if entry.strip() not in names:
                    raise ArchitectureError(
                        f"architecture {original!r}, layer {i}: block {entry!r} is not a choice here; "
                        f"choices are {names}"
                    )
                indices.append(names.index(entry.strip()))
                continue
            try:
                index = int(entry)
            except (TypeError, ValueError):
                raise ArchitectureError(
                    f"architecture {original!r}, layer {i}: {entry!r} is not a choice index"
                ) from None
            if isinstance(entry, float) and entry != index or not 0 <= index < len(layer.choices):
                raise ArchitectureError(
                    f"architecture {original!r}, layer {i}: choice {entry!r} is out of range; "
                    f"allowed 0..{len(layer.choices) - 1} ({', '.join(names)})"
                )
            indices.append(index)
        return tuple(indices)

    format_arch = staticmethod(format_arch)

    def describe_arch(self, arch: Sequence[int]) -> list[str]:
        """Block strings of the chosen blocks, one per searchable layer."""
        arch = self.parse_arch(arch)
        return [str(layer.choices[c]) for layer, c in zip(self.searchable_layers, arch, strict=True)]

    def full_choices(self, arch: Sequence[int]) -> tuple[int, ...]:
        """Expands an architecture to one choice index per layer (0 for fixed layers)."""
        it = iter(arch)
        return tuple(next(it) if layer.searchable else 0 for layer in self.layers)
