"""Devices by name: the one place that checks a requested device exists on this machine."""

from __future__ import annotations

import torch

from .errors import SegformerError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a `torch.device` that exists here: None is the CPU, ``"auto"`` CUDA when present;
    an unknown or absent device is a `SegformerError` (torch raises a RuntimeError or, for CUDA on a
    build without it, an AssertionError)."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SegformerError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SegformerError(f"device {device!r} requested but torch sees no CUDA GPU")
        if resolved.index is not None and resolved.index >= count:
            raise SegformerError(f"device {device!r} requested but torch sees {count} CUDA GPU(s)")
    elif resolved.type != "cpu":
        raise SegformerError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    return resolved


def has_fast_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively (so that bf16 autocast speeds training up): a
    CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX instructions (on other CPUs torch
    emulates bf16 and autocast slows training down)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # (private in torch 2.x)
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
