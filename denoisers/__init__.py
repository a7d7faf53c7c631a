"""Denoiser plugins: ``forward(noisy, sigma) -> image in [0,1]``, made by name.

A plugin is one module here that calls ``@register_denoiser``; the registry finds it (see
:func:`certify.registry.plugin_modules`).

>>> from denoisers import create_denoiser, list_denoisers
>>> "none" in list_denoisers() and "dncnn.mnist5k_s025_mse" in list_denoisers("dncnn.*")
True
>>> import torch
>>> x = torch.rand(2, 3, 8, 8)
>>> bool((create_denoiser("none")(x, 0.25) == x).all())
True
"""

from __future__ import annotations

from certify.registry import Registry

DENOISERS = Registry("denoiser", entry_point_group="denoised_smoothing.denoisers", package=__name__)
register_denoiser = DENOISERS.register
create_denoiser = DENOISERS.create   # ``none``, ``dncnn``, ``dncnn:PATH``, ``ddpm:HUB_ID``, ``adm:PRESET`` ...
list_denoisers = DENOISERS.list      # names matching a wildcard pattern (shipped weights and plugins included)

__all__ = ["DENOISERS", "create_denoiser", "list_denoisers", "register_denoiser"]
