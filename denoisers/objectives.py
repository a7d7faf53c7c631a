"""The denoiser objectives of Salman et al. (2020): ``mse``, ``stab``, ``classification``, ``stab+mse``.

- ``mse``: ||D(x + d) - x||^2, image quality only; needs no classifier.
- ``stab``: cross-entropy between F(D(x + d)) and F's own prediction on the clean x; the denoiser
  learns to keep the classifier's decision, which is what certification needs.
- ``classification``: cross-entropy between F(D(x + d)) and the true label.
- ``stab+mse``: the same loss as ``stab``, started from an MSE-trained denoiser (``init_from`` in a
  training config); the paper's best recipe.

The classifier F is frozen: eval mode, ``requires_grad=False``, never in the optimizer. White-box
training passes one classifier; black-box training passes surrogates, rotated one per minibatch by
:class:`ClassifierRotation`, and the target classifier is never seen.

>>> import torch
>>> from denoisers.dncnn import DnCNN
>>> x = torch.rand(4, 1, 8, 8)
>>> loss = denoiser_loss("mse", DnCNN(1, depth=3, features=4), x, torch.zeros(4, dtype=torch.long), sigma=0.25)
>>> loss.ndim, bool(loss > 0)
(0, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "nn.Module | None"], torch.Tensor]


def _mse(denoised: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor, classifier: nn.Module | None) -> torch.Tensor:
    return F.mse_loss(denoised, clean)


def _stab(denoised: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor, classifier: nn.Module | None) -> torch.Tensor:
    with torch.no_grad():
        target = classifier(clean).argmax(dim=1)
    return F.cross_entropy(classifier(denoised), target)


def _classification(denoised: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor,
                    classifier: nn.Module | None) -> torch.Tensor:
    return F.cross_entropy(classifier(denoised), labels)


@dataclass(frozen=True)
class Objective:
    """A named loss ``fn(denoised, clean, labels, classifier)``; ``needs_init`` for fine-tuning objectives."""

    name: str
    fn: LossFn
    needs_classifier: bool
    needs_init: bool = False


OBJECTIVES: dict[str, Objective] = {
    "mse": Objective("mse", _mse, needs_classifier=False),
    "stab": Objective("stab", _stab, needs_classifier=True),
    "classification": Objective("classification", _classification, needs_classifier=True),
    "stab+mse": Objective("stab+mse", _stab, needs_classifier=True, needs_init=True),
}


def get_objective(name: str) -> Objective:
    """The objective called ``name``.

    >>> get_objective("stab+mse").needs_init
    True
    """
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


class ClassifierRotation:
    """Frozen classifiers taken in turn, one per minibatch (black-box training through surrogates).

    >>> rot = ClassifierRotation([nn.Identity().eval(), nn.Flatten().eval()])
    >>> [type(rot.next()).__name__ for _ in range(3)]
    ['Identity', 'Flatten', 'Identity']
    """

    def __init__(self, classifiers: Sequence[nn.Module]) -> None:
        self.classifiers = list(classifiers)
        self.position = 0
        for clf in self.classifiers:
            if any(p.requires_grad for p in clf.parameters()) or clf.training:
                raise ValueError(f"classifier {type(clf).__name__} must be frozen (eval mode, requires_grad=False); "
                                 f"use classifiers.training.freeze")

    def __len__(self) -> int:
        return len(self.classifiers)

    def next(self) -> nn.Module | None:
        """The classifier for the next minibatch (``None`` when there are none, e.g. for ``mse``)."""
        if not self.classifiers:
            return None
        clf = self.classifiers[self.position % len(self.classifiers)]
        self.position += 1
        return clf


def denoiser_loss(objective: str | Objective, denoiser: nn.Module, clean: torch.Tensor, labels: torch.Tensor,
                  sigma: float, classifier: nn.Module | None = None) -> torch.Tensor:
    """Add N(0, sigma^2) noise to ``clean`` (in [0,1] pixel space), denoise, and score with the objective."""
    obj = get_objective(objective) if isinstance(objective, str) else objective
    if obj.needs_classifier and classifier is None:
        raise ValueError(f"objective {obj.name!r} needs a classifier")
    noisy = clean + sigma * torch.randn_like(clean)
    return obj.fn(denoiser(noisy, sigma), clean, labels, classifier)
