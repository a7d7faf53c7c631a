"""``torchvision:NAME``: a torchvision classification model with its weights' preprocessing.

``weights=`` names a weights enum member (``"DEFAULT"``, ``"IMAGENET1K_V2"``) and downloads it (needs
internet); ``weights_file=`` loads a local safetensors or ``.pth`` state dict instead (never unpickled).
Input size (the eval crop), interpolation, mean, std and the category names come from the weights
enum's metadata, which is available offline; a model without weights metadata gets ImageNet's.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from . import register_classifier
from .base import ImageClassifier
from .state_files import build_with_weights

log = logging.getLogger(__name__)

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _weights_enum(name: str, weights: str | None) -> Any:
    """The weights enum member ``weights`` (or DEFAULT) of model ``name``; None if it has none."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    key = weights or "DEFAULT"
    try:
        return enum[key] if key != "DEFAULT" else enum.DEFAULT
    except (KeyError, AttributeError):
        raise ValueError(f"torchvision model {name!r} has no weights {key!r}; choose from "
                         f"{', '.join(m.name for m in enum)} or DEFAULT") from None


@register_classifier("torchvision", summary="torchvision:NAME, torchvision model (weights=ENUM, weights_file=PATH)")
def create_torchvision(identifier: str | None = None, weights: str | None = "DEFAULT",
                       weights_file: str | None = None, num_classes: int | None = None,
                       labels: Sequence[str] | None = None, **model_kwargs: Any) -> ImageClassifier:
    """``torchvision:resnet50``; ``weights=None`` keeps random weights, ``weights_file`` loads local ones.

    >>> clf = create_torchvision("resnet18", weights=None, num_classes=3)
    >>> clf.num_classes, clf.input_size
    (3, (224, 224))
    """
    import torchvision

    if not identifier:
        raise ValueError("torchvision classifier needs a model name, e.g. 'torchvision:resnet50'")
    if identifier not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision classification model {identifier!r} "
                         "(see torchvision.models.list_models(module=torchvision.models))")
    meta_weights = _weights_enum(identifier, weights)  # metadata only: reading it downloads nothing
    download = weights is not None and weights_file is None
    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = build_with_weights(
        lambda: torchvision.models.get_model(identifier, weights=meta_weights if download else None, **kwargs),
        download, f"torchvision weights {meta_weights}", "pass weights_file=PATH or weights=None", weights_file)
    n = int(num_classes if num_classes is not None else _infer_num_classes(model))
    size, mean, std, interpolation = (224, 224), _IMAGENET_MEAN, _IMAGENET_STD, "bilinear"
    if meta_weights is not None:
        tf = meta_weights.transforms()
        crop = list(getattr(tf, "crop_size", [224]))
        size = (crop[0], crop[-1])
        mean, std = tuple(tf.mean), tuple(tf.std)
        interpolation = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}.get(
            tf.interpolation.value, "bilinear")
        categories = meta_weights.meta.get("categories")
        if labels is None and categories and len(categories) == n:
            labels = list(categories)
    return ImageClassifier(model, num_classes=n, input_size=size, mean=mean, std=std,
                           interpolation=interpolation, labels=labels, name=f"torchvision:{identifier}")


def _infer_num_classes(model: Any) -> int:
    """Output size of the model's last Linear layer (torchvision models end in one)."""
    from torch import nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("cannot infer num_classes for this torchvision model; pass num_classes=")
    return int(last[-1].out_features)
