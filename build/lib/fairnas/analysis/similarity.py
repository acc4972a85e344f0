"""Choice-block similarity: the paper's explanation of why weight sharing ranks architectures well.

FairNAS observes that, after strictly fair training, the candidate blocks of a layer compute
similar features from the same input, so swapping one block for another in a path changes the
downstream inputs little and inherited weights stay meaningful. :func:`block_similarity` measures
this: it feeds one input to all m blocks of a layer and compares their outputs channel by channel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fairnas.models.supernet import Supernet

Matrices = Mapping[Any, np.ndarray] | Sequence[np.ndarray]


def _layer_index(supernet: Supernet, layer: int) -> int:
    """Index in ``space.layers`` of searchable layer ``layer``."""
    searchable = supernet.space.searchable_indices
    if not 0 <= layer < len(searchable):
        raise ValueError(
            f"layer {layer} is not a searchable layer: the space has {len(searchable)} (0..{len(searchable) - 1})"
        )
    return searchable[layer]


def _input_of(supernet: Supernet, index: int, x: Tensor) -> Tensor:
    """The input of ``space.layers[index]`` along the path of first choices (choice 0 of every earlier layer)."""
    x = supernet.stem(x)
    for j in range(index):
        x = supernet.layers[j][0](x)
    return x


def _branch(block: torch.nn.Module, residual: bool, h: Tensor) -> Tensor:
    """What a block adds to its input: ``f(x)`` of a residual block ``x + f(x)``, zero for a skip."""
    out = block(h)
    return out - h if residual else out


def block_similarity(supernet: Supernet, layer: int, x_batches: Iterable[Any], branch: bool = True) -> np.ndarray:
    """m x m mean per-channel cosine similarity between the outputs of the choice blocks of one layer.

    For every batch, the input of searchable layer ``layer`` is computed by running the stem and
    the earlier layers along a fixed path: choice 0 of every earlier searchable layer (any fixed
    path works, as all blocks see the same input; the first choice keeps it reproducible). The
    SAME input goes through all m blocks (a ``skip`` block returns it unchanged). For each pair
    of blocks, each image and each output channel, the two channel maps are flattened over the
    spatial dimensions and their cosine similarity taken; the matrix holds the mean over images
    and channels. A pair where either map is all zeros (cosine undefined, e.g. a channel killed
    by ReLU) is left out of that mean.

    With ``branch`` (the default) a residual block contributes its residual branch ``f(x)``
    instead of ``x + f(x)``: the identity part is the same input for every block and would make
    even untrained blocks look alike (about 0.97 on fairnas_mini). A ``skip`` choice then has no
    branch (all zeros), so its row and column are NaN; ``branch=False`` compares the full outputs,
    skip included. Runs in eval mode (BN running statistics) without
    gradients, and restores the module's training mode afterwards.

    Args:
        supernet: The (trained) supernet.
        layer: Searchable layer index, 0..L-1.
        x_batches: Input batches (N, C, H, W), or ``(inputs, targets, ...)`` tuples as a data loader yields.

    Returns:
        Symmetric float64 matrix with entries in [-1, 1] and a diagonal of 1 (NaN where no pair was defined).
    """
    index = _layer_index(supernet, layer)
    blocks = list(supernet.choice_blocks(layer))
    shape = supernet.space.layers[index]
    # Whether each block's output is its input plus a branch, as its block kind says.
    residual = [spec.residual(shape.in_channels, shape.out_channels, shape.stride) for spec in shape.choices]
    m = len(blocks)
    parameter = next(supernet.parameters())
    sums = torch.zeros(m, m, dtype=torch.float64)
    counts = torch.zeros(m, m, dtype=torch.float64)
    was_training = supernet.training
    supernet.eval()
    try:
        with torch.no_grad():
            for batch in x_batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x.to(device=parameter.device, dtype=parameter.dtype)
                h = _input_of(supernet, index, x)
                # (m, N, C, HW) in float64: the mean of many cosines should not lose precision.
                maps = [_branch(block, res, h) if branch else block(h) for block, res in zip(blocks, residual)]
                outputs = torch.stack([m.flatten(2) for m in maps]).to(torch.float64)
                norms = outputs.norm(dim=-1)
                valid = norms > 0
                unit = outputs / torch.where(valid, norms, torch.ones_like(norms)).unsqueeze(-1)
                cosines = torch.einsum("incs,jncs->ijnc", unit, unit)
                both = (valid.unsqueeze(1) & valid.unsqueeze(0)).to(torch.float64)
                sums += (cosines * both).sum(dim=(2, 3)).cpu()
                counts += both.sum(dim=(2, 3)).cpu()
    finally:
        supernet.train(was_training)
    if not counts.any():
        raise ValueError("x_batches is empty: at least one input batch is needed")
    matrix = (sums / counts).numpy()  # 0 / 0 gives NaN: no defined pair
    matrix = np.clip((matrix + matrix.T) / 2.0, -1.0, 1.0)
    np.fill_diagonal(matrix, np.where(np.isnan(np.diag(matrix)), np.nan, 1.0))
    return matrix


def _items(matrices: Matrices) -> list[tuple[Any, np.ndarray]]:
    """(layer, matrix) pairs of a mapping, or of a sequence indexed by layer."""
    pairs = matrices.items() if isinstance(matrices, Mapping) else enumerate(matrices)
    return [(key, np.asarray(value, dtype=np.float64)) for key, value in pairs]


def similarity_summary(matrices: Matrices) -> dict[str, Any]:
    """Mean off-diagonal similarity per layer and overall (the mean of the per-layer means).

    Args:
        matrices: ``{layer: matrix}``, or a list of matrices indexed by searchable layer.

    Returns:
        ``{"per_layer": {layer: mean}, "overall": mean}``; NaN entries are ignored, and a 1 x 1
        matrix (no pairs) gives NaN.
    """
    per_layer = {}
    for key, matrix in _items(matrices):
        off = matrix[~np.eye(matrix.shape[0], dtype=bool)]
        off = off[np.isfinite(off)]
        per_layer[key] = float(off.mean()) if off.size else math.nan
    finite = [v for v in per_layer.values() if math.isfinite(v)]
    return {"per_layer": per_layer, "overall": float(np.mean(finite)) if finite else math.nan}


def plot_similarity(
    matrices: Matrices,
    path: str | Path,
    title: str = "Choice-block similarity",
    labels: Sequence[str] | None = None,
) -> Path:
    """Saves one heatmap panel per layer (shared colour scale -1..1, values written in the cells).

    Uses matplotlib's Agg canvas directly (no pyplot), so it is safe on headless machines and
    leaves any global backend alone.

    Args:
        matrices: ``{layer: matrix}``, or a list of matrices indexed by searchable layer.
        path: Image file to write (format from the suffix); parent folders are created.
        title: Figure title.
        labels: Names of the m choices (e.g. ``space.searchable_layers[0].choices``), default indices.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = _items(matrices)
    if not items:
        raise ValueError("no similarity matrices to plot")
    columns = min(len(items), 4)
    rows = math.ceil(len(items) / columns)
    figure = Figure(figsize=(3.2 * columns + 0.8, 3.2 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    image = None
    for ax, (key, matrix) in zip(axes, items):
        m = matrix.shape[0]
        image = ax.imshow(matrix, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
        ticks = [str(c) for c in labels] if labels is not None and len(labels) == m else [str(i) for i in range(m)]
        ax.set_xticks(range(m), ticks, rotation=90 if labels is not None else 0, fontsize=7)
        ax.set_yticks(range(m), ticks, fontsize=7)
        ax.set_title(f"layer {key}", fontsize=9)
        if m <= 8:
            for i in range(m):
                for j in range(m):
                    value = matrix[i, j]
                    if not np.isfinite(value):
                        continue
                    color = "white" if abs(value) > 0.6 else "black"  # readable on the dark ends of the map
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=color)
    for ax in axes[len(items) :]:
        ax.set_axis_off()
    figure.colorbar(image, ax=list(axes[: len(items)]), shrink=0.8, label="cosine similarity")
    figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
