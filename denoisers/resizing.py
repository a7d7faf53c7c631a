"""Resizing a noisy image, and what it does to the noise: the diffusion denoisers' explicit resize rule.

Smoothing noise must be added at the resolution a diffusion model works at; when the user asks for a
resize instead, the model must be told the noise level left after resizing, which `resize_noise_gain`
computes exactly from the resize weights.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

RESIZE_MODES = ("nearest", "bilinear", "bicubic", "area")


def resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``F.interpolate`` as the denoisers use it (``align_corners=False`` for the smooth modes)."""
    extra = {} if mode in ("nearest", "area") else {"align_corners": False}
    return F.interpolate(images, size=size, mode=mode, **extra)


@functools.lru_cache(maxsize=64)
def resize_noise_gain(source: tuple[int, int], target: tuple[int, int], mode: str) -> float:
    """How much a `resize` scales the std of white noise: root mean square over the output pixels.

    A resize is linear and separable, so each output pixel's noise variance is the product of the
    sums of its squared weights along each axis; the weights are read off by resizing the identity.

    >>> round(resize_noise_gain((512, 512), (256, 256), "bilinear"), 3)   # mean of 2 x 2 pixels
    0.5
    >>> resize_noise_gain((28, 28), (28, 28), "bicubic")
    1.0
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")

    def energy(n_in: int, n_out: int) -> torch.Tensor:
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1)
        weights = resize(eye, (n_out, 1), mode).reshape(n_in, n_out)  # [input pixel, output pixel]
        return (weights ** 2).sum(0)

    rows, cols = energy(source[0], target[0]), energy(source[1], target[1])
    return float(torch.outer(rows, cols).mean().sqrt())
