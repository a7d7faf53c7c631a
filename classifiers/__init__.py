"""Classifier plugins: [0,1] images of any size in, logits (or hard labels) out, made by name.

Each classifier owns its resize and normalization (they run after the noise) and knows
``num_classes`` and ``labels``.

>>> from classifiers import list_classifiers
>>> "timm" in list_classifiers()
True
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from torch import nn

from certify.registry import Registry

CLASSIFIERS = Registry("classifier", entry_point_group="denoised_smoothing.classifiers")
register_classifier = CLASSIFIERS.register

# Built-in plugin modules, one family per file; each registers itself on import.
_PLUGINS = ("timm_models", "small_cnn", "torchvision_models", "hf_models", "efficientnet_lite", "remote")
_loaded = False


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in _PLUGINS:
            importlib.import_module(f"{__name__}.{name}")
        # Shipped weights: each pretrained/NAME/bundle.json becomes the name NAME.
        CLASSIFIERS.register_bundled(Path(__file__).parent / "pretrained")


def create_classifier(spec: str, **kwargs: Any) -> nn.Module:
    """Build the classifier a spec names: ``timm:resnet18``, ``torchvision:resnet50``, ``hf:REPO`` ..."""
    _load_builtin()
    return CLASSIFIERS.create(spec, **kwargs)


def list_classifiers(pattern: str = "*") -> list[str]:
    """Registered classifier names matching a wildcard pattern (plugins from entry points included)."""
    _load_builtin()
    return CLASSIFIERS.list(pattern)


def list_architectures(pattern: str = "*") -> list[str]:
    """``timm:NAME`` and ``torchvision:NAME`` specs whose architecture name (as ``timm.list_models``
    matches) or whole spec matches ``pattern``: ``*resnet*`` and ``timm:resnet5*`` find ``timm:resnet50``.
    Only torchvision's classification models are listed, as only they are classifiers.

    >>> "timm:resnet50" in list_architectures("*resnet*") and "torchvision:resnet50" in list_architectures("resnet50")
    True
    >>> list_architectures("torchvision:*rcnn*")
    []
    """
    import fnmatch

    import timm
    import torchvision

    names = [("timm", n) for n in timm.list_models()]
    names += [("torchvision", n) for n in sorted(torchvision.models.list_models(module=torchvision.models))]
    return [f"{zoo}:{n}" for zoo, n in names
            if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(f"{zoo}:{n}", pattern)]


__all__ = ["CLASSIFIERS", "create_classifier", "list_architectures", "list_classifiers", "register_classifier"]
