"""The wrapper every classifier family uses: resize and normalize *after* the noise, then the net."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ImageClassifier(nn.Module):
    """[0,1] images (B, C, H, W) of any size -> logits (B, num_classes).

    Smoothing noise lives in [0,1] pixel space, so radii are in pixel units; this wrapper is the one
    place where images are resized to ``input_size`` (with antialiasing) and normalized.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    >>> clf = ImageClassifier(net, num_classes=5, input_size=(4, 4), mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> clf(torch.rand(2, 3, 9, 9)).shape
    torch.Size([2, 5])
    """

    differentiable = True

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str = "bilinear",
        labels: Sequence[str] | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if labels is not None and len(labels) != num_classes:
            raise ValueError(f"got {len(labels)} labels for {num_classes} classes")
        if interpolation not in ("nearest", "bilinear", "bicubic", "area"):
            raise ValueError(f"interpolation must be nearest, bilinear, bicubic or area, got {interpolation!r}")
        self.model = model
        self.num_classes = int(num_classes)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.interpolation = interpolation
        self.labels = list(labels) if labels is not None else [str(i) for i in range(num_classes)]
        self.name = name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) if mean is not None else None, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) if std is not None else None, persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to the model's input size, then normalize with its mean and std."""
        if images.ndim != 4:
            raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(images.shape)}")
        if self.mean is not None and images.shape[1] != self.mean.shape[1]:
            raise ValueError(f"classifier {self.name or type(self.model).__name__} takes {self.mean.shape[1]}-channel "
                             f"images, got {images.shape[1]} channel(s): the dataset does not match it (e.g. grayscale "
                             f"digits in front of an RGB model)")
        if self.input_size is not None and tuple(images.shape[-2:]) != self.input_size:
            smooth = self.interpolation in ("bilinear", "bicubic")
            images = F.interpolate(images, size=self.input_size, mode=self.interpolation,
                                   antialias=smooth, **({"align_corners": False} if smooth else {}))
        if self.mean is not None:
            images = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))
