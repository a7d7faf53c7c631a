"""DnCNN (Zhang et al. 2017) as used by denoised smoothing: ``dncnn`` (64 features), ``dncnn-wide`` (128).

conv3x3 + ReLU, then ``depth - 2`` x [conv3x3 (no bias) + BatchNorm + ReLU], then conv3x3 (no bias)
back to the image channels. The network predicts the *noise*, so the output is ``x - net(x)``;
with the last conv zero-initialised a fresh DnCNN is the identity, and training starts from
"do nothing" rather than from a random image.

>>> import torch
>>> net = DnCNN(in_channels=3)
>>> sum(p.numel() for p in net.parameters())
558400
>>> x = torch.rand(2, 3, 16, 16)
>>> bool(torch.equal(net(x, 0.25), x))
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import register_denoiser
from .trained import TrainedDenoiser


class DnCNN(TrainedDenoiser):
    """Residual DnCNN; BatchNorm with eps 1e-4 and momentum 0.95 (in PyTorch's convention).

    PyTorch's ``momentum`` is the weight of the *new* batch statistic; 0.95 is the value the paper's
    code passes to ``nn.BatchNorm2d``, kept as is so its checkpoints load and behave the same.
    """

    architecture = "dncnn"

    def __init__(self, in_channels: int = 3, depth: int = 17, features: int = 64, **provenance: Any) -> None:
        if int(in_channels) < 1 or int(depth) < 2 or int(features) < 1:
            raise ValueError(f"DnCNN needs in_channels >= 1, depth >= 2, features >= 1; got "
                             f"in_channels={in_channels}, depth={depth}, features={features}")
        in_channels, depth, features = int(in_channels), int(depth), int(features)
        super().__init__(dict(in_channels=in_channels, depth=depth, features=features), **provenance)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False),
                       nn.BatchNorm2d(features, eps=1e-4, momentum=0.95), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, in_channels, 3, padding=1, bias=False))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Orthogonal convs, BatchNorm weight 1 / bias 0, last conv zero (so the model is the identity)."""
        convs = [m for m in self.net if isinstance(m, nn.Conv2d)]
        for conv in convs[:-1]:
            nn.init.orthogonal_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.zeros_(convs[-1].weight)
        for m in self.net:
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def denoise(self, noisy: torch.Tensor) -> torch.Tensor:
        return noisy - self.net(noisy)


register_denoiser("dncnn", summary="dncnn[:DIR|HUB_ID], DnCNN depth 17, 64 features (fresh, or a checkpoint)")(
    DnCNN.factory())
register_denoiser("dncnn-wide", summary="dncnn-wide[:DIR|HUB_ID], DnCNN depth 17, 128 features")(
    DnCNN.factory("dncnn-wide", features=128))
