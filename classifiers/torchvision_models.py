"""``torchvision:NAME``: a torchvision classification model with its weights' preprocessing.

``weights=`` names a weights enum member (``"DEFAULT"``, ``"IMAGENET1K_V2"``) and downloads it (needs
internet); ``weights_file=`` loads a local safetensors or ``.pth`` state dict instead (never unpickled).
Input size (the eval crop), interpolation, mean, std and the category names come from the weights
enum's metadata, which is available offline; a model without weights metadata gets ImageNet's.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from certify.libraries import url_problems
from certify.registry import close_matches

from . import register_classifier
from .base import ImageClassifier
from .state_files import build_with_weights, weights_file_problems

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


def unknown_torchvision_model(identifier: str | None) -> str | None:
    """Why ``torchvision:identifier`` names no torchvision classification model, or None when it names one."""
    import torchvision

    if not identifier:
        return "torchvision classifier needs a model name, e.g. 'torchvision:resnet50'"
    names = torchvision.models.list_models(module=torchvision.models)
    if identifier in names:
        return None
    return f"unknown torchvision classification model {identifier!r}{close_matches(identifier, names, 'torchvision:')}"


def check_torchvision(identifier: str | None = None, weights: str | None = "DEFAULT", weights_file: str | None = None,
                      **_: Any) -> list[str]:
    """Preflight: the model name, the weights name, and the weights file (local, or in torch's hub cache)."""
    unknown = unknown_torchvision_model(identifier)
    if unknown:
        return [unknown]
    if weights_file is not None:
        return weights_file_problems(weights_file, "weights_file")
    try:
        meta = _weights_enum(identifier, weights)
    except ValueError as exc:
        return [str(exc)]
    if weights is None or meta is None:
        return []
    return url_problems(meta.url, "pass weights=None for random weights or weights_file=PATH, or download it into "
                                  "that folder")


@register_classifier("torchvision", summary="torchvision:NAME, torchvision model (weights=ENUM, weights_file=PATH)",
                     check=check_torchvision)
def create_torchvision(identifier: str | None = None, weights: str | None = "DEFAULT",
                       weights_file: str | None = None, num_classes: int | None = None,
                       labels: Sequence[str] | None = None, **model_kwargs: Any) -> ImageClassifier:
    """``torchvision:resnet50``; ``weights=None`` keeps random weights, ``weights_file`` loads local ones.

    >>> clf = create_torchvision("resnet18", weights=None, num_classes=3)
    >>> clf.num_classes, clf.input_size
    (3, (224, 224))
    """
    import torchvision

    unknown = unknown_torchvision_model(identifier)
    if unknown:
        raise ValueError(unknown)
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
