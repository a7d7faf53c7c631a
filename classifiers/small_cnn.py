"""``small-cnn``: a LeNet-style CNN for small images (MNIST), trainable on a CPU in a minute."""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import torch
from torch import nn

from certify.checkpoint import ConfigCheckpoint
from certify.registry import refuse_unknown_options

from . import register_classifier
from .base import ImageClassifier


def _net(in_channels: int, num_classes: int, width: int, image_size: int) -> nn.Sequential:
    feat = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * feat * feat, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )


class SmallCNN(ConfigCheckpoint, ImageClassifier):
    """Two conv blocks and two linear layers; its config travels with its weights (``save_pretrained`` /
    ``from_pretrained`` of :class:`certify.checkpoint.ConfigCheckpoint`).

    >>> clf = SmallCNN(in_channels=1, num_classes=10)
    >>> clf(torch.rand(4, 1, 28, 28)).shape
    torch.Size([4, 10])
    """

    architecture = "small-cnn"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, image_size: int = 28,
                 mean: float = 0.1307, std: float = 0.3081, labels: list[str] | None = None,
                 **extra: Any) -> None:
        sizes = dict(in_channels=in_channels, num_classes=num_classes, width=width, image_size=image_size)
        bad = {k: v for k, v in sizes.items()
               if not isinstance(v, numbers.Integral) or v < (4 if k == "image_size" else 1)}
        if not all(isinstance(v, numbers.Real) for v in (mean, std)) or not std > 0:
            bad.update(mean=mean, std=std)
        if bad:  # a config's typo, before a tensor of negative size (RuntimeError) is attempted
            raise ValueError(f"small-cnn needs integer sizes >= 1 (image_size >= 4) and numbers mean, std > 0; "
                             f"got {bad}")
        super().__init__(_net(in_channels, num_classes, width, image_size), num_classes=num_classes,
                         input_size=(image_size, image_size), mean=(mean,) * in_channels,
                         std=(std,) * in_channels, labels=labels, name="small-cnn")
        self.config = dict(architecture="small-cnn", in_channels=in_channels, num_classes=num_classes,
                           width=width, image_size=image_size, mean=mean, std=std, labels=self.labels, **extra)



_create = SmallCNN.factory()


@register_classifier("small-cnn", summary="small-cnn[:DIR], LeNet-style CNN for MNIST-sized images",
                     check=_create.check)
def create_small_cnn(identifier: str | None = None, **kwargs: Any) -> SmallCNN:
    """``small-cnn`` with options (in_channels, num_classes, width, image_size, mean, std, labels), or
    ``small-cnn:DIR`` for a trained one."""
    if identifier is None:
        params = inspect.signature(SmallCNN).parameters.items()
        options = [name for name, p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        refuse_unknown_options(kwargs, options, "classifier 'small-cnn'")  # **extra is for configs, not typos
    return _create(identifier, **kwargs)
