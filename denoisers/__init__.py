"""Denoiser plugins: ``forward(noisy, sigma) -> image in [0,1]``, made by name.

>>> from denoisers import create_denoiser, list_denoisers
>>> "none" in list_denoisers()
True
>>> import torch
>>> x = torch.rand(2, 3, 8, 8)
>>> bool((create_denoiser("none")(x, 0.25) == x).all())
True
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from torch import nn

from certify.registry import Registry

DENOISERS = Registry("denoiser", entry_point_group="denoised_smoothing.denoisers")
register_denoiser = DENOISERS.register

# Built-in plugin modules, one plugin per file; each registers itself on import.
_PLUGINS = ("identity", "dncnn", "memnet", "ddpm", "adm", "ffdnet")
_loaded = False


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in _PLUGINS:
            importlib.import_module(f"{__name__}.{name}")
        # Shipped weights: each pretrained/NAME/bundle.json becomes the name NAME.
        DENOISERS.register_bundled(Path(__file__).parent / "pretrained")


def create_denoiser(spec: str, **kwargs: Any) -> nn.Module:
    """Build the denoiser a spec names: ``none``, ``dncnn``, ``dncnn:PATH``, ``ddpm:HUB_ID`` ..."""
    _load_builtin()
    return DENOISERS.create(spec, **kwargs)


def list_denoisers(pattern: str = "*") -> list[str]:
    """Registered denoiser names matching a wildcard pattern (plugins from entry points included)."""
    _load_builtin()
    return DENOISERS.list(pattern)


__all__ = ["DENOISERS", "create_denoiser", "list_denoisers", "register_denoiser"]
