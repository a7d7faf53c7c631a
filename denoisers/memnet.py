"""MemNet (Tai et al. 2017) as used by denoised smoothing: memory blocks with gated long-term memory.

Built only from BN-ReLU-Conv units (conv without bias). A feature extractor maps the image to
``features`` channels; memory block ``m`` (1-based) runs ``num_resblocks`` residual blocks and a 1x1
gate over the concatenation of their outputs (short-term memory) and of the feature extractor
output plus the gates of earlier blocks (long-term memory): ``(num_resblocks + m) * features`` ->
``features`` channels. A reconstructor maps back to the image, plus the input (global residual).

>>> import torch
>>> net = MemNet(in_channels=1, features=8, num_memblocks=2, num_resblocks=2)
>>> [block.gate.conv.in_channels for block in net.memory_blocks]
[24, 32]
>>> net(torch.rand(2, 1, 12, 12), 0.5).shape
torch.Size([2, 1, 12, 12])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import register_denoiser
from .trained import TrainedDenoiser


class BNReLUConv(nn.Module):
    """BatchNorm -> ReLU -> conv (no bias): MemNet's pre-activation unit."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.relu(self.bn(x)))


class ResidualBlock(nn.Module):
    """Two 3x3 BN-ReLU-Conv units plus an identity skip."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.body = nn.Sequential(BNReLUConv(features, features), BNReLUConv(features, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MemoryBlock(nn.Module):
    """Residual blocks (short-term memory) and a 1x1 gate that also sees the long-term memory."""

    def __init__(self, features: int, num_resblocks: int, num_long_term: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(features) for _ in range(num_resblocks))
        self.gate = BNReLUConv((num_resblocks + num_long_term) * features, features, kernel_size=1)

    def forward(self, x: torch.Tensor, long_term: list[torch.Tensor]) -> torch.Tensor:
        short_term = []
        for block in self.resblocks:
            x = block(x)
            short_term.append(x)
        return self.gate(torch.cat(short_term + long_term, dim=1))


class MemNet(TrainedDenoiser):
    """MemNet with ``num_memblocks`` memory blocks of ``num_resblocks`` residual blocks each."""

    architecture = "memnet"

    def __init__(self, in_channels: int = 3, features: int = 64, num_memblocks: int = 3, num_resblocks: int = 6,
                 **provenance: Any) -> None:
        values = dict(in_channels=int(in_channels), features=int(features), num_memblocks=int(num_memblocks),
                      num_resblocks=int(num_resblocks))
        if min(values.values()) < 1:
            raise ValueError(f"MemNet options must all be >= 1, got {values}")
        super().__init__(values, **provenance)
        c, f = values["in_channels"], values["features"]
        self.feature_extractor = BNReLUConv(c, f)
        self.memory_blocks = nn.ModuleList(MemoryBlock(f, values["num_resblocks"], m + 1)
                                           for m in range(values["num_memblocks"]))
        self.reconstructor = BNReLUConv(f, c)

    def denoise(self, noisy: torch.Tensor) -> torch.Tensor:
        out = self.feature_extractor(noisy)
        long_term = [out]
        for block in self.memory_blocks:
            out = block(out, long_term)
            long_term.append(out)
        return self.reconstructor(out) + noisy


register_denoiser("memnet", summary="memnet[:DIR|HUB_ID], MemNet, 64 features, 3 memory blocks x 6 residual blocks")(
    MemNet.factory())
