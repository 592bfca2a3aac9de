"""Attention maps of the MiT encoder, for the figures of a report (maps per stage, and stage 1 with and
without sequence reduction).

For a query pixel, the map of a block is ``softmax(q k^T / sqrt(d))`` of that query's token over the
block's keys, averaged over heads, as the model computes it: forward pre-hooks on every
`EfficientSelfAttention` receive the block's normalised tokens and recompute q (from ``attn.q``) and
the keys (``attn.kv`` on ``LN(attn.sr(x))`` when the stage reduces its sequence, else on x).

"Without sequence reduction" is the same query against keys made by ``attn.kv`` from the *un-reduced*
tokens (skipping ``attn.sr`` and ``attn.norm``): one key per stride-4 token instead of one per sr x sr
window. A model trained with reduction never computed this: it shows where the query's projection points
at full resolution, not a map the trained network uses.

Each stage's figure shows the last block of the stage; the query is the token whose patch contains the
query pixel (token (y * h // H, x * w // W) on a stage map of h x w).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.io import load_image
from ..errors import SegformerError
from ..fileio import check_output, staged_output, write_json
from ..inference.ops import preprocess
from ..inference.settings import InferenceSettings
from ..models.mit import EfficientSelfAttention
from ..models.summary import forward_bytes
from ..runtime import check_memory
from .report import pyplot, save_figure


@dataclass
class BlockAttention:
    """Attention of the query tokens in one block: ``maps`` (Q, h_k, w_k) over the keys the block uses,
    ``full`` (Q, h, w) over un-reduced keys (only computed where sr > 1), ``query`` token (row, col)."""

    stage: int
    block: int
    sr_ratio: int
    grid: tuple[int, int]
    queries: list[tuple[int, int]]
    maps: Tensor
    full: Tensor | None = None


def _heads(t: Tensor, heads: int) -> Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)  # (B, heads, N, d)


def attention_probs(attn: EfficientSelfAttention, x: Tensor, h: int, w: int, reduce: bool = True) -> Tensor:
    """Attention probabilities ``(B, heads, N, M)`` of `attn` on tokens ``x`` (B, N, C) of an h x w map;
    ``reduce=False`` takes keys from the un-reduced tokens (M = N) even when the block has sr > 1."""
    b, _, c = x.shape
    q = _heads(attn.q(x), attn.num_heads)
    y = x
    if reduce and attn.sr_ratio > 1:
        r = attn.sr_ratio
        y = x.transpose(1, 2).reshape(b, c, h, w)
        if h < r or w < r:  # as in EfficientSelfAttention.forward
            y = F.pad(y, (0, max(0, r - w), 0, max(0, r - h)))
        y = attn.norm(attn.sr(y).flatten(2).transpose(1, 2))  # (B, M, C)
    k = _heads(attn.kv(y)[..., :c], attn.num_heads)  # kv = [keys | values] along channels
    scale = (c // attn.num_heads) ** -0.5
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)


def _key_grid(h: int, w: int, r: int) -> tuple[int, int]:
    """Spatial size of the reduced key map (stride-r conv without padding, padded up to one window)."""
    return (max(h, r) // r, max(w, r) // r) if r > 1 else (h, w)


@torch.inference_mode()
def collect_attention(
    model: nn.Module, image: Tensor, points: Sequence[tuple[float, float]], full_resolution: bool = True
) -> list[BlockAttention]:
    """Attention of every block for query `points` given as (x, y) fractions of the image in [0, 1).

    `image` is one normalised ``(3, H, W)`` tensor at the model's working size. Returns one entry per
    block, in order; ``full`` holds the without-reduction maps of blocks with sr > 1 when
    `full_resolution` is set.
    """
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, EfficientSelfAttention)]
    if not modules:
        raise SegformerError(f"{type(model).__name__} has no MiT self-attention layers to visualise")
    found: list[BlockAttention] = []

    def hook(name: str):
        parts = name.split(".")  # encoder.stages.S.blocks.B.attn
        stage, block = int(parts[parts.index("stages") + 1]), int(parts[parts.index("blocks") + 1])

        def run(attn: EfficientSelfAttention, args: tuple[Any, ...]) -> None:
            x, h, w = args
            queries = [(min(h - 1, int(py * h)), min(w - 1, int(px * w))) for px, py in points]
            index = torch.tensor([r * w + c for r, c in queries])
            probs = attention_probs(attn, x, h, w)[0, :, index].mean(0)  # (Q, M), mean over heads
            kh, kw = _key_grid(h, w, attn.sr_ratio)
            entry = BlockAttention(stage, block, attn.sr_ratio, (h, w), queries, probs.reshape(-1, kh, kw))
            if full_resolution and attn.sr_ratio > 1:
                full = attention_probs(attn, x, h, w, reduce=False)[0, :, index].mean(0)
                entry.full = full.reshape(-1, h, w)
            found.append(entry)

        return run

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules]
    try:
        model.eval()(image[None])
    finally:
        for handle in handles:
            handle.remove()
    return found


def relative_attention(attn: Tensor) -> Tensor:
    """`attn` (h, w), weights summing to 1, as multiples of uniform attention (1.0: the query attends to
    every key alike), so maps over different numbers of keys share one scale."""
    return attn.float() * attn.numel()


def _heatmap(image: np.ndarray, attn: Tensor, norm, alpha: float = 0.55) -> np.ndarray:
    """`attn` (h, w) as multiples of uniform (`relative_attention`), upsampled to the image and blended
    in with the colour map under `norm`, the scale shared by every panel (and shown by the colour bar):
    a map at 1.02x uniform stays flat instead of being stretched to full contrast."""
    import matplotlib

    a = relative_attention(attn)[None, None]
    a = F.interpolate(a, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
    colour = matplotlib.colormaps[_CMAP](norm(a))[..., :3] * 255.0
    return (image.astype(np.float32) * (1 - alpha) + colour * alpha + 0.5).clip(0, 255).astype(np.uint8)


_CMAP = "inferno"


def _colorbar(fig, axes, norm) -> None:
    from matplotlib.cm import ScalarMappable

    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=_CMAP), ax=axes, fraction=0.03, pad=0.02)
    bar.set_label("attention / uniform attention (one scale for all panels)", fontsize=8)


def _peak(attn: Tensor) -> str:
    """The largest weight as a multiple of uniform attention (1.0: the query attends everywhere alike)."""
    return f"peak {float(relative_attention(attn).max()):.2f}x uniform"


def _mark(ax, point_px: tuple[float, float]) -> None:
    ax.plot(*point_px, marker="+", markersize=14, markeredgewidth=2.5, color="cyan")
    ax.plot(*point_px, marker="o", markersize=14, markerfacecolor="none", markeredgewidth=1.5, color="cyan")


def _draw_stages(plt, image: np.ndarray, last: dict, points, norm, out: Path) -> list[Path]:
    """``stage{i}.png``: the maps of every query of the last block of each stage."""
    written = []
    for stage, entry in sorted(last.items()):
        fig, axes = plt.subplots(1, len(points), figsize=(3.2 * len(points), 3.4), squeeze=False)
        for q, (ax, point) in enumerate(zip(axes[0], points, strict=True)):
            ax.imshow(_heatmap(image, entry.maps[q], norm))
            _mark(ax, point)
            ax.set_axis_off()
            ax.set_title(f"query ({point[0]:.0f}, {point[1]:.0f}): {_peak(entry.maps[q])}", fontsize=9)
        kh, kw = entry.maps.shape[-2:]
        fig.suptitle(
            f"stage {stage + 1}, block {entry.block + 1}: {entry.grid[0]}x{entry.grid[1]} queries, "
            f"{kh}x{kw} keys (sr {entry.sr_ratio})",
            fontsize=10,
        )
        _colorbar(fig, axes, norm)
        path = out / f"stage{stage + 1}.png"
        save_figure(fig, path)
        written.append(path)
    return written


def _draw_sr_vs_full(plt, image: np.ndarray, first: BlockAttention, points, norm, out: Path) -> Path:
    """``stage1_sr_vs_full.png``: stage 1 with and without sequence reduction, side by side."""
    fig, axes = plt.subplots(len(points), 2, figsize=(6.6, 3.3 * len(points)), squeeze=False)
    for q, point in enumerate(points):
        h, w = first.grid
        kh, kw = first.maps.shape[-2:]
        for col, (maps, title) in enumerate(
            [
                (first.maps, f"with SR (sr {first.sr_ratio}): {kh}x{kw} keys"),
                (first.full, f"without SR: {h}x{w} keys"),
            ]
        ):
            ax = axes[q, col]
            ax.imshow(_heatmap(image, maps[q], norm))
            _mark(ax, point)
            ax.set_axis_off()
            ax.set_title(f"{title}\n{_peak(maps[q])}", fontsize=9)
    fig.suptitle(f"stage 1, block {first.block + 1}: sequence reduction on / off", fontsize=10)
    _colorbar(fig, axes, norm)
    path = out / "stage1_sr_vs_full.png"
    save_figure(fig, path)
    return path


def _entropy(p: Tensor) -> float:
    p = p.flatten().double()
    return float(-(p * p.clamp(min=1e-30).log()).sum())


def _attention_doc(image_path, size, norm, points, last: dict) -> dict:
    """What ``attention.json`` holds: points, grids, key grids, entropies."""
    return {
        "image": str(image_path),
        "working_size": size,
        "colour_scale": [norm.vmin, norm.vmax],  # multiples of uniform attention, shared by every panel
        "points": [list(p) for p in points],
        "stages": [
            {
                "stage": e.stage + 1,
                "block": e.block + 1,
                "sr_ratio": e.sr_ratio,
                "queries_grid": list(e.grid),
                "keys_grid": list(e.maps.shape[-2:]),
                "query_tokens": [list(q) for q in e.queries],
                "entropy": [_entropy(m) for m in e.maps],
                "entropy_without_sr": [_entropy(m) for m in e.full] if e.full is not None else None,
            }
            for _, e in sorted(last.items())
        ],
    }


def write_attention_maps(
    model: nn.Module,
    image_path: str | Path,
    out: str | Path,
    points: Sequence[tuple[float, float]] | None = None,
    size: int | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``stage{i}.png`` (heatmaps of every query over the image, last block of stage i),
    ``stage1_sr_vs_full.png`` (stage 1 with and without sequence reduction, side by side) and
    ``attention.json`` (points, grids, key grids, entropies) into `out`.

    `points` are (x, y) pixel coordinates of the image (default: the centre and two points at
    (0.35, 0.42) and (0.65, 0.42) of the width and height, roughly the eyes of an aligned face). A
    non-empty `out` holding other files is refused unless `overwrite` (they are then kept).
    """
    image = load_image(image_path)
    height, width = image.shape[:2]
    if points is None:
        points = [(0.5 * width, 0.5 * height), (0.35 * width, 0.42 * height), (0.65 * width, 0.42 * height)]
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise SegformerError(
                f"{image_path}: query point ({x:g}, {y:g}) lies outside the {width}x{height} image"
            )
    check_output(
        out, "attention", [image_path], overwrite, replace=True, what="attention maps"
    )  # before the work
    settings = InferenceSettings.from_meta(getattr(model, "meta", None)).replace(image_size=size)
    h, w = settings.image_size
    check_memory(forward_bytes(model.config, (h, w)), f"image_size {h}x{w}: a forward pass")  # before it
    tensor = preprocess(image, settings.image_size, settings.mean, settings.std)
    size = h if h == w else [h, w]
    fractions = [(x / width, y / height) for x, y in points]
    blocks = collect_attention(model, tensor, fractions)
    last = {b.stage: b for b in blocks}  # the last block of each stage
    final = Path(out)
    # The image read is never written; maps written earlier by segformer attention are replaced; other
    # files in OUT stay only with `overwrite` (and are never replaced).
    with staged_output(
        final, "attention", [image_path], overwrite, replace=True, what="attention maps"
    ) as out:
        plt = pyplot()
        from matplotlib.colors import Normalize

        # One scale for every map drawn: 0 to the largest weight (as a multiple of uniform) of any of them.
        drawn = [m for e in last.values() for m in e.maps] + (
            list(last[0].full) if last[0].full is not None else []
        )
        norm = Normalize(0.0, max(float(relative_attention(m).max()) for m in drawn))
        written = _draw_stages(plt, image, last, points, norm, out)
        if last[0].full is not None:
            written.append(_draw_sr_vs_full(plt, image, last[0], points, norm, out))
        write_json(out / "attention.json", _attention_doc(image_path, size, norm, points, last))
    return [final / p.name for p in written]
