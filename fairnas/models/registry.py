"""The open block registry: every kind of candidate block is one registered class.

A block kind is a frozen dataclass, subclass of :class:`BlockSpec`, that owns everything the
project needs to know about it:

* its **name grammar**: ``template``, e.g. ``"ir_k{kernel}_e{expansion}"``; each ``{field}`` is an
  integer dataclass field, so ``"ir_k3_e6"`` parses to ``InvertedResidualBlock(kernel=3,
  expansion=6)`` and prints back the same (override :meth:`BlockSpec.from_text` and ``__str__``
  for anything fancier);
* which layer shapes it accepts (:meth:`BlockSpec.check`);
* its **module** (:meth:`BlockSpec.build`);
* its **exact cost** (:meth:`BlockSpec.cost`), multiply-adds and parameters, without running it;
* what it means for analysis and export: whether its output is its input plus a branch
  (:meth:`BlockSpec.residual`), and whether it is the identity at a shape (:meth:`BlockSpec.is_identity`,
  such blocks are dropped from exported networks).

The built-in kinds (``ir_k{K}_e{E}``, ``skip``, ``id``) live in :mod:`fairnas.models.blocks`. A
kind of your own is a subclass decorated with :func:`register_block`, in any module; a search
space YAML names it by import path in its ``blocks:`` list (``blocks: [mypkg.blocks.ConvBlock]``),
which imports it before the choices are parsed, so no file of this package needs editing.

This module imports no torch (the built-in kinds are imported on the first look-up).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any, ClassVar

from fairnas.errors import SearchSpaceError


def conv_cost(size: int, cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> tuple[int, int, int]:
    """(madds, params, output size) of a bias-free conv with 'same' padding (k // 2) followed by BN.

    MAdds count the conv's multiply-accumulates; params count its weights and BN's 2 affine
    parameters per channel. An odd-kernel conv's output size does not depend on the kernel.
    """
    out = (size - 1) // stride + 1
    weights = cout * (cin // groups) * kernel * kernel
    return out * out * weights, weights + 2 * cout, out


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One candidate block of a layer: base class of every block kind.

    Subclasses are frozen dataclasses with integer fields named in ``template`` and implement
    :meth:`build` and :meth:`cost`; the others have working defaults. Register one with
    :func:`register_block`. ``BlockSpec.parse(text)`` finds the registered kind whose grammar
    matches ``text``.
    """

    kind: ClassVar[str] = ""
    """Registry name of the kind (unique)."""
    template: ClassVar[str] = ""
    """Name grammar, e.g. ``"ir_k{kernel}_e{expansion}"``; ``{field}`` stands for a non-negative integer."""
    example: ClassVar[str] = ""
    """An example name, shown in the error for unknown blocks (default: the template)."""

    # --- grammar -----------------------------------------------------------------------------

    @classmethod
    def pattern(cls) -> re.Pattern[str]:
        """The regular expression of ``template`` (one named group per field)."""
        parts = re.split(r"\{(\w+)\}", cls.template)
        regex = "".join(re.escape(p) if i % 2 == 0 else rf"(?P<{p}>\d+)" for i, p in enumerate(parts))
        return re.compile(rf"^{regex}$")

    @classmethod
    def from_text(cls, text: str) -> BlockSpec | None:
        """This kind's block named ``text``, or None if the name is not of this kind.

        Raises:
            SearchSpaceError: the name is of this kind but its values are invalid.
        """
        match = cls.pattern().match(text)
        if match is None:
            return None
        try:
            return cls(**{k: int(v) for k, v in match.groupdict().items()})
        except SearchSpaceError as error:
            raise SearchSpaceError(f"block {text!r}: {error}") from None

    def __str__(self) -> str:
        return self.template.format(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @staticmethod
    def parse(text: Any) -> BlockSpec:
        """The block named ``text``, of whichever registered kind matches it.

        Raises:
            SearchSpaceError: no registered kind matches (the message lists them), or the values are invalid.
        """
        text = str(text).strip()
        found = [block for kind in registered_kinds().values() if (block := kind.from_text(text)) is not None]
        if not found:
            kinds = ", ".join(
                f"{k.template!r}" + (f" (e.g. {k.example!r})" if k.example and k.example != k.template else "")
                for k in registered_kinds().values()
            )
            raise SearchSpaceError(
                f"unknown block {text!r}: the registered block kinds are {kinds}; a kind of your own is a "
                "fairnas.models.BlockSpec subclass decorated with @register_block, named by import path in "
                "the search space's 'blocks:' list"
            )
        if len(found) > 1:
            raise SearchSpaceError(
                f"block {text!r} matches several registered kinds ({', '.join(type(b).__name__ for b in found)}): "
                "give them grammars that do not overlap"
            )
        return found[0]

    # --- shape, module, cost -----------------------------------------------------------------

    def check(self, in_channels: int, out_channels: int, stride: int) -> str | None:
        """Why this block cannot be used in a layer of this shape, or None if it can."""
        del in_channels, out_channels, stride
        return None

    def build(self, in_channels: int, out_channels: int, stride: int, act: str) -> Any:
        """The ``torch.nn.Module`` of this block in a layer of this shape, with activation ``act``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement build()")

    def cost(self, size: int, in_channels: int, out_channels: int, stride: int) -> tuple[int, int]:
        """Exact (multiply-adds, parameters) of :meth:`build`'s module at input resolution ``size``.

        Conventions: every multiply-accumulate of convolutions and linear layers (none for BN,
        activations, pooling or residual adds), and every parameter (BN affine ones included).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement cost()")

    def residual(self, in_channels: int, out_channels: int, stride: int) -> bool:
        """Whether the module's output is its input plus a branch (an identity counts, with a zero branch)."""
        del in_channels, out_channels, stride
        return False

    def is_identity(self, in_channels: int, out_channels: int, stride: int) -> bool:
        """Whether the module returns its input unchanged at this shape (exported networks drop it)."""
        del in_channels, out_channels, stride
        return False


_REGISTRY: dict[str, type[BlockSpec]] = {}


def register_block(cls: type[BlockSpec]) -> type[BlockSpec]:
    """Class decorator: registers a block kind (a :class:`BlockSpec` subclass) under ``cls.kind``.

    Registering the same class again is a no-op; another class under a taken name is an error.
    """
    if not (isinstance(cls, type) and issubclass(cls, BlockSpec)) or cls is BlockSpec:
        raise TypeError(f"register_block expects a subclass of fairnas.models.BlockSpec, got {cls!r}")
    if not dataclasses.is_dataclass(cls) or not cls.kind or not cls.template:
        raise TypeError(f"block kind {cls.__name__} must be a (frozen) dataclass with a 'kind' and a 'template'")
    fields = {f.name for f in dataclasses.fields(cls)}
    named = set(re.findall(r"\{(\w+)\}", cls.template))
    if named != fields:
        raise TypeError(
            f"block kind {cls.__name__}: its template {cls.template!r} names {sorted(named)}, its fields are "
            f"{sorted(fields)}; they must be the same (or override from_text and __str__)"
        )
    taken = _REGISTRY.get(cls.kind)
    if taken is not None and taken is not cls and _qualname(taken) != _qualname(cls):
        raise TypeError(f"block kind {cls.kind!r} is already registered by {_qualname(taken)}")
    _REGISTRY[cls.kind] = cls
    return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def registered_kinds() -> dict[str, type[BlockSpec]]:
    """Every registered block kind, by name (the built-in ones first)."""
    return dict(_REGISTRY)


def import_block(path: str) -> type[BlockSpec]:
    """Imports and registers the block kind at import path ``path`` (``package.module.ClassName``).

    Raises:
        SearchSpaceError: the path cannot be imported or does not name a block kind.
    """
    path = str(path).strip()
    module_name, _, attr = path.rpartition(".")
    try:
        if not module_name:
            raise ImportError(f"{path!r} is not a dotted path")
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise SearchSpaceError(
            f"cannot import block kind {path!r} ({error}): give 'package.module.ClassName' of a module "
            "on the Python path"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, BlockSpec)):
        raise SearchSpaceError(f"{path!r} is not a block kind: expected a subclass of fairnas.models.BlockSpec")
    try:
        return register_block(cls)
    except TypeError as error:
        raise SearchSpaceError(str(error)) from None
