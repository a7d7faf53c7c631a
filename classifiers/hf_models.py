"""``hf:REPO_OR_DIR``: a transformers image classifier (ViT, BEiT, ConvNeXt, ...) with its processor's settings.

The model comes from ``AutoModelForImageClassification``; the preprocessing (input size, resample
filter, mean, std, rescale factor) is read from the repo's image-processor config and re-done in torch
*after* the noise, so the noise stays in [0,1] pixel space. Carlini et al. (2023) used
``microsoft/beit-large-patch16-512`` on ImageNet (512 px, bicubic, mean = std = 0.5) and a ViT-B/16
fine-tuned on CIFAR-10 (32 px upsampled to 224, bicubic): both are plain ``hf:REPO`` here.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import torch
from torch import nn

from certify.checkpoint import one_line
from certify.libraries import hub_problems, is_hub_id, reachable

from . import register_classifier
from .base import ImageClassifier

log = logging.getLogger(__name__)

# PIL resample codes (what image-processor configs store) -> torch interpolate modes.
_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bilinear"}


class _Logits(nn.Module):
    """Returns the ``.logits`` tensor of a transformers classification model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def _field(obj: Any, key: str) -> Any:
    """A key of a size dict (a plain dict or transformers' SizeDict), or None."""
    if obj is None:
        return None
    if isinstance(obj, int):
        return obj if key == "shortest_edge" else None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def processor_settings(processor: Any, model_config: Any = None) -> dict[str, Any]:
    """Input size, interpolation, mean and std (for [0,1] inputs) equivalent to an image processor.

    The processor rescales 0..255 pixels by ``rescale_factor`` and normalizes with (mean, std); our
    inputs are already in [0,1], so with s = 255 * rescale_factor (1 when the model expects [0,1]) the
    net sees (s x - mean) / std = (x - mean / s) / (std / s).

    >>> from transformers import ViTImageProcessor
    >>> processor_settings(ViTImageProcessor(size={"height": 32, "width": 32}, resample=3))
    {'input_size': (32, 32), 'interpolation': 'bicubic', 'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)}
    """
    size = None
    if getattr(processor, "do_center_crop", False) and _field(getattr(processor, "crop_size", None), "height"):
        crop = processor.crop_size
        size = (int(_field(crop, "height")), int(_field(crop, "width")))
    elif getattr(processor, "do_resize", True) and _field(getattr(processor, "size", None), "height"):
        s = processor.size
        size = (int(_field(s, "height")), int(_field(s, "width")))
    elif _field(getattr(processor, "size", None), "shortest_edge"):
        edge = int(_field(processor.size, "shortest_edge"))
        size = (edge, edge)
    elif model_config is not None and getattr(model_config, "image_size", None):
        edge = model_config.image_size
        size = tuple(edge) if isinstance(edge, (list, tuple)) else (int(edge), int(edge))
    resample = getattr(processor, "resample", 2)
    interpolation = _RESAMPLE.get(int(resample) if resample is not None else 2, "bilinear")
    scale = 255.0 * float(getattr(processor, "rescale_factor", 1 / 255)) if getattr(processor, "do_rescale", True) else 255.0
    if getattr(processor, "do_normalize", True) and getattr(processor, "image_mean", None) is not None:
        mean = [float(m) for m in processor.image_mean]
        std = [float(s) for s in processor.image_std]
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    return dict(input_size=size, interpolation=interpolation,
                mean=tuple(round(m / scale, 10) for m in mean), std=tuple(round(s / scale, 10) for s in std))


def check_hf(identifier: str | None = None, **_: Any) -> list[str]:
    """Preflight: a local folder with a config, or a hub repo that is cached or reachable."""
    if not identifier:
        return ["hf classifier needs a hub repo id or a local folder, e.g. 'hf:google/vit-base-patch16-224'"]
    path = os.path.expanduser(identifier)
    if os.path.isdir(path):
        return [] if os.path.isfile(os.path.join(path, "config.json")) else ["the folder has no config.json"]
    if not is_hub_id(identifier):
        return ["no such folder (expected a folder written by save_pretrained, or a hub repo id OWNER/NAME)"]
    return hub_problems(identifier, ("config.json",), "the model",
                        "give a local folder written by save_pretrained, or set HF_HOME to a cache that has it")


@register_classifier("hf", summary="hf:REPO_OR_DIR, transformers image classifier with its processor's settings",
                     check=check_hf)
def create_hf(identifier: str | None = None, labels: Sequence[str] | None = None,
              input_size: tuple[int, int] | None = None, interpolation: str | None = None,
              **model_kwargs: Any) -> ImageClassifier:
    """``hf:microsoft/beit-large-patch16-512`` or ``hf:/path/saved/with/save_pretrained``.

    ``input_size`` / ``interpolation`` override the processor's (e.g. Carlini's bicubic 32 -> 224).
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    if not identifier:
        raise ValueError("hf classifier needs a hub repo id or a local folder, e.g. 'hf:google/vit-base-patch16-224'")
    source = os.path.expanduser(identifier)
    if not os.path.isdir(source):
        reachable()  # one probe: offline, transformers reads the cache at once instead of retrying
    try:
        model = AutoModelForImageClassification.from_pretrained(source, **model_kwargs)
        processor = AutoImageProcessor.from_pretrained(source)
    except TypeError:  # an option the model does not take: the registry names it
        raise
    except Exception as exc:  # missing files, a torn safetensors file, a config that is not one: one line
        raise ValueError(f"could not load a transformers image classifier and image processor from {identifier!r} "
                         f"({one_line(exc)})") from None
    model.eval()
    settings = processor_settings(processor, model.config)
    if input_size is not None:
        settings["input_size"] = tuple(input_size)
    if interpolation is not None:
        settings["interpolation"] = interpolation
    n = int(model.config.num_labels)
    if labels is None:
        id2label = getattr(model.config, "id2label", None) or {}
        labels = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(n)]
    log.info("hf:%s preprocessing %s", identifier, settings)
    return ImageClassifier(_Logits(model), num_classes=n, labels=labels, name=f"hf:{identifier}", **settings)
