"""The ``none`` denoiser: plain randomized smoothing of the classifier itself."""

from __future__ import annotations

import torch
from torch import nn

from . import register_denoiser


class Identity(nn.Module):
    """Returns the noisy image unchanged (not clipped), so f sees exactly x + d."""

    output_range = None  # the noisy image itself: not an image in [0, 1], and not checked as one

    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        return noisy

    def network_calls(self, sigma: float) -> int:
        return 0  # no network: the cost per sample is the classifier's alone


@register_denoiser("none", summary="identity: no denoiser (Cohen et al. randomized smoothing)")
def create_identity(identifier: str | None = None) -> Identity:
    if identifier is not None:
        raise ValueError(f"denoiser 'none' takes no identifier, got 'none:{identifier}'")
    return Identity()
