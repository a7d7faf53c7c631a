"""Classifier plugins: [0,1] images of any size in, logits (or hard labels) out, made by name.

Each classifier owns its resize and normalization (they run after the noise) and knows
``num_classes`` and ``labels``. A plugin is one module here that calls ``@register_classifier``;
the registry finds it (see :func:`certify.registry.plugin_modules`).

>>> from classifiers import create_classifier, list_classifiers
>>> "timm" in list_classifiers() and "small-cnn.mnist5k" in list_classifiers("*mnist*")
True
>>> create_classifier("small-cnn", width=4).num_classes
10
"""

from __future__ import annotations

from certify.registry import Registry

CLASSIFIERS = Registry("classifier", entry_point_group="denoised_smoothing.classifiers", package=__name__)
register_classifier = CLASSIFIERS.register
create_classifier = CLASSIFIERS.create   # ``timm:resnet18``, ``torchvision:resnet50``, ``hf:REPO``, ``small-cnn:DIR`` ...


def list_classifiers(pattern: str = "*") -> list[str]:
    """Every classifier name matching a wildcard pattern, as ``dsmooth list classifiers PATTERN`` lists them:
    the registered families, shipped weights and plugins, then the timm and torchvision architectures
    (``timm:NAME``, ``torchvision:NAME``; see :func:`list_architectures`).

    >>> names = list_classifiers("*resnet5*")
    >>> "timm:resnet50" in names and "torchvision:resnet50" in names
    True
    """
    return CLASSIFIERS.list(pattern) + list_architectures(pattern)


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
