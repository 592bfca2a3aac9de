"""Parameters and FLOPs of a model, broken down by component (the `segformer info` table).

FLOPs are counted by `torch.utils.flop_counter` (matrix multiplications, convolutions and attention,
2 FLOPs per multiply-add; elementwise work such as norms, GELU and interpolation is not counted, as
in the papers). Papers that quote "GFLOPs" from mmcv/fvcore usually report multiply-adds, which is
half of our figure: the table prints both.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..runtime import check_memory
from .decoder import literal_decoders

_SECTIONS = ("encoder", "decoder")


@dataclass
class Row:
    component: str
    params: int
    flops: int | None = None
    section: str | None = None


def _component(name: str) -> tuple[tuple[int, int], str] | None:
    """(sort key, label) of the component owning parameter/module `name`, or None for a container."""
    p = name.split(".")
    if p[0] == "encoder" and len(p) >= 4 and p[1] == "stages":
        i = int(p[2]) + 1
        part = {
            "patch_embed": ((i, 0), f"stage {i} patch embedding"),
            "blocks": ((i, 1), f"stage {i} blocks"),
            "norm": ((90, 0), "stage norms"),
        }
        return part.get(p[3])
    if p[0] in _SECTIONS and len(p) >= 3 and p[1] == "levels":
        # U-Net: encoder level i works at stride 2^i; decoder.levels[0] is the deepest up-step,
        # producing the map of encoder level DEPTH - 1.
        i = int(p[2])
        if p[0] == "encoder":
            return (i + 1, 0), f"encoder level {i + 1}"
        return (100 + i, 0), f"decoder up-step {i + 1}"
    if p[0] == "decoder" and len(p) >= 2:
        part = {
            "linear_c": ((100, 0), "decoder projections"),
            "linear_fuse": ((101, 0), "decoder fuse"),
            "norm": ((101, 0), "decoder fuse"),
            "classifier": ((102, 0), "classifier"),
        }
        return part.get(p[1])
    if p[0] in _SECTIONS:
        return None
    return ((200, 0), p[0])  # other models: one row per top-level module


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def forward_bytes(config: Any, size: int | Sequence[int], batch: int = 1) -> int:
    """A lower bound of the memory one inference forward pass at `size` allocates: its float32 input
    and its logits, which every architecture returns at the input size (the features in between come
    on top). What `segformer.runtime.check_memory` compares with the memory available."""
    h, w = (size, size) if isinstance(size, int) else size
    channels = getattr(config, "in_channels", 3) + getattr(config, "num_classes", 0)
    return 4 * batch * h * w * channels


def count_flops(
    model: nn.Module, size: int | tuple[int, int] = 512, batch: int = 1, literal: bool = True
) -> dict[str, int]:
    """FLOPs of one forward pass at `size`, per module path ("" is the whole model).

    With `literal` (the default) SegFormer decoders are counted in their literal formulation
    (concatenate, then fuse), the architecture the papers' figures describe; ``literal=False`` counts
    the cheaper exact rewrite the model runs (`segformer.models.decoder`), and counting a fused model
    (`segformer.models.fuse`) counts what it runs.
    """
    h, w = (size, size) if isinstance(size, int) else size
    config = getattr(model, "config", None)
    check_memory(forward_bytes(config, (h, w), batch), f"a forward pass at {h}x{w}")
    x = torch.zeros(batch, getattr(config, "in_channels", 3), h, w)
    # The CPU flash-attention kernel has no formula registered in torch; it costs what SDPA costs.
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            literal_decoders(model) if literal else nullcontext(),
            FlopCounterMode(display=False, custom_mapping=custom) as counter,
        ):
            model(x)
    finally:
        model.train(was_training)
    root = type(model).__name__
    out = {}
    for path, ops in counter.get_flop_counts().items():
        if path == "Global":
            continue
        path = "" if path == root else path.removeprefix(root + ".")
        out[path] = int(sum(ops.values()))
    return out


def summarize(model: nn.Module, size: int | tuple[int, int] | None = 512) -> list[Row]:
    """Rows of parameters (and FLOPs at `size`, when given) per component, then subtotals and total."""
    params: dict[str, int] = {}
    keys: dict[str, tuple[int, int]] = {}
    sections: dict[str, str | None] = {}
    for name, p in model.named_parameters():
        key, label = _component(name) or ((300, 0), name.split(".")[0])
        params[label] = params.get(label, 0) + p.numel()
        keys[label] = key
        sections[label] = name.split(".")[0] if name.split(".")[0] in _SECTIONS else None

    flops: dict[str, int] = {}
    per_module = count_flops(model, size) if size is not None else {}
    for path, count in per_module.items():
        comp = _component(path) if path else None
        if comp is None:
            continue
        parts = path.split(".")
        ancestors = (".".join(parts[:i]) for i in range(1, len(parts)))
        if any(a in per_module and (_component(a) or (0, ""))[1] == comp[1] for a in ancestors):
            continue  # counted with its ancestor
        flops[comp[1]] = flops.get(comp[1], 0) + count

    rows = []
    for label in sorted(params, key=lambda lab: keys[lab]):
        rows.append(
            Row(label, params[label], flops.get(label) if size is not None else None, sections[label])
        )
    out: list[Row] = []
    for section in _SECTIONS:
        members = [r for r in rows if r.section == section]
        if members:
            out.extend(members)
            sec_flops = per_module.get(section) if size is not None else None
            out.append(Row(section, sum(r.params for r in members), sec_flops, "subtotal"))
    out.extend(r for r in rows if r.section is None)
    out.append(Row("total", sum(params.values()), per_module.get("") if size is not None else None, "total"))
    return out


def format_table(rows: list[Row]) -> str:
    """A plain-text table: component, parameters, share of the total, GFLOPs and GMACs."""
    total = rows[-1].params
    lines = [f"{'component':<28}{'params':>13}{'share':>8}{'GFLOPs':>10}{'GMACs':>10}"]
    for r in rows:
        if r.section in ("subtotal", "total"):
            lines.append("-" * len(lines[0]))
        gf = f"{r.flops / 1e9:10.3f}{r.flops / 2e9:10.3f}" if r.flops is not None else f"{'':>20}"
        lines.append(f"{r.component:<28}{r.params:>13,}{100 * r.params / total:>7.1f}%{gf}")
    return "\n".join(lines)
