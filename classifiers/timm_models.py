"""``timm:NAME``: any timm model; its pretrained config decides input size, interpolation, mean, std."""

from __future__ import annotations

import logging

from . import register_classifier
from .base import ImageClassifier

log = logging.getLogger(__name__)


@register_classifier("timm", summary="timm:NAME, any timm model (pretrained=, pretrained_file=, num_classes=)")
def create_timm(identifier: str | None = None, pretrained: bool = True, pretrained_file: str | None = None,
                num_classes: int | None = None, labels=None, **model_kwargs) -> ImageClassifier:
    """``timm:resnet18``; ``pretrained=False`` builds random weights, ``pretrained_file`` loads local ones."""
    import timm

    if not identifier:
        raise ValueError("timm classifier needs a model name, e.g. 'timm:resnet50'")
    if identifier not in timm.list_models() and identifier.split(".")[0] not in timm.list_models():
        raise ValueError(f"unknown timm model {identifier!r}")
    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained_file is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
    model = timm.create_model(identifier, pretrained=pretrained or pretrained_file is not None, **kwargs)
    model.eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    return ImageClassifier(
        model,
        num_classes=model.num_classes,
        input_size=tuple(cfg["input_size"][-2:]),
        mean=cfg["mean"],
        std=cfg["std"],
        interpolation=cfg.get("interpolation", "bilinear") if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest") else "bilinear",
        labels=labels,
        name=f"timm:{identifier}",
    )
