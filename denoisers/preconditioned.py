"""Sigma-native diffusion denoisers: models trained on the noise level itself (EDM, consistency models).

Such a model has no timestep to choose: `denoisers.diffusion`'s rule calls it at sigma_VE = 2 sigma
through its preconditioning (Karras et al. 2022), ``x0 = c_skip x_ve + c_out F(c_in x_ve, c_noise)``, one
call, clipped to [-1, 1]. The families (``edm``: `denoisers.edm`, ``cm``: `denoisers.cm`) only give
the coefficients; the model is a diffusers ``UNet2DModel`` with its scheduler's configuration
(``sigma_data``, ``sigma_min``, ``sigma_max``), loaded from a hub id or a folder as ``ddpm:`` loads.

**Class-conditional models** (``num_class_embeds``, e.g. the ImageNet-64 consistency models) are told a
class with every noisy image. The certificate stays valid when that label is a deterministic function
of the noisy input alone: D, and so f o D, is then still one fixed function of x + d, and g is a
smoothed classifier like any other. Never the clean image's true label (that is not a function of
x + d). Two such choices: ``class_label=K``, one fixed class for every image, or
``label_classifier=SPEC``, a classifier (built by `classifiers.create_classifier`) whose prediction on
the noisy image, clipped to [0, 1], is the label.

>>> Preconditioning(sigma=1.0, c_in=0.8944, c_noise=0.0, c_skip=0.2, c_out=0.4472).c_skip   # EDM at sigma 1
0.2
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .ddpm import load_unet_and_scheduler, run_unet, unet_dtype
from .diffusion import DiffusionDenoiser


@dataclass(frozen=True)
class Preconditioning:
    """``x0 = c_skip x + c_out F(c_in x, c_noise)`` at one noise level ``sigma`` (in [-1, 1] units)."""

    sigma: float
    c_in: float
    c_noise: float
    c_skip: float
    c_out: float


class PreconditionedDenoiser(DiffusionDenoiser):
    """A diffusers UNet trained on sigma itself, called once at sigma_VE (see the module docstring).

    Args:
        unet: a diffusers ``UNet2DModel`` (``unet(x, t, class_labels=...).sample``).
        scheduler: its diffusers scheduler; ``config.sigma_data``, ``sigma_min``, ``sigma_max`` are read.
        dtype: run the UNet in this dtype (``fp16`` / ``bf16`` on a GPU); the arithmetic around it stays fp32.
        class_label: the class every noisy image is denoised towards (class-conditional models).
        label_classifier: a classifier spec (or module) whose prediction on the noisy image is its class.
        resize: see `DiffusionDenoiser`.
    """

    #: the diffusers scheduler classes of this family (the first is assumed when a folder has no scheduler config)
    SCHEDULERS: tuple[str, ...] = ()

    def __init__(self, unet: nn.Module, scheduler: Any, *, dtype: torch.dtype | str | None = None,
                 class_label: int | None = None, label_classifier: str | nn.Module | None = None,
                 resize: str | None = None, name: str = "") -> None:
        ucfg = getattr(unet, "config", {})
        config = getattr(scheduler, "config", {})
        family = type(self).__name__
        if type(scheduler).__name__ not in self.SCHEDULERS:
            raise ValueError(f"{family} needs a {' or '.join(self.SCHEDULERS)}, got a {type(scheduler).__name__} "
                             f"(a DDPM-style schedule of timesteps is a ddpm: denoiser)")
        if ucfg.get("out_channels", ucfg.get("in_channels")) != ucfg.get("in_channels"):
            raise ValueError(f"{family}: the UNet returns {ucfg.get('out_channels')} channels for "
                             f"{ucfg.get('in_channels')}; a sigma-native model predicts one image (no learned variance)")
        self.sigma_data, self.sigma_min, self.sigma_max = (float(config.get(k, d)) for k, d in
                                                           (("sigma_data", 0.5), ("sigma_min", 0.002), ("sigma_max", 80.0)))
        classes = ucfg.get("num_class_embeds")
        if classes and class_label is None and label_classifier is None:
            raise ValueError(f"{family}: the UNet is class-conditional ({classes} classes) and smoothing knows no "
                             f"class: give class_label=K (one fixed class) or label_classifier=SPEC (the class a "
                             f"classifier predicts on the noisy image)")
        if not classes and (class_label is not None or label_classifier is not None):
            raise ValueError(f"{family}: class_label / label_classifier given, but the UNet is unconditional")
        if class_label is not None and label_classifier is not None:
            raise ValueError(f"{family}: give class_label or label_classifier, not both")
        if class_label is not None and not (isinstance(class_label, int) and 0 <= class_label < classes):
            raise ValueError(f"{family}: class_label must be an int in [0, {classes}), got {class_label!r}")
        if isinstance(label_classifier, str):
            from classifiers import create_classifier

            label_classifier = create_classifier(label_classifier)
        if label_classifier is not None and getattr(label_classifier, "num_classes", classes) != classes:
            raise ValueError(f"{family}: label_classifier has {label_classifier.num_classes} classes, the UNet "
                             f"{classes}; they must be the same classes")
        super().__init__(unet, sample_size=ucfg.get("sample_size"), in_channels=ucfg.get("in_channels"),
                         resize=resize, name=name or type(unet).__name__)
        self.scheduler = scheduler
        self.class_label = class_label
        self.label_classifier = label_classifier.eval() if label_classifier is not None else None
        self.dtype = unet_dtype(dtype)
        if self.dtype is not None:
            self.model.to(self.dtype)

    def preconditioning(self, sigma: float) -> Preconditioning:
        """The family's coefficients at noise level ``sigma`` (in [-1, 1] units)."""
        raise NotImplementedError

    def make_plan(self, sigma_ve: float) -> Preconditioning:
        if not self.sigma_min < sigma_ve <= self.sigma_max:
            raise ValueError(f"{type(self).__name__} was trained for noise levels in ({self.sigma_min:g}, "
                             f"{self.sigma_max:g}] in [-1, 1] units, i.e. pixel sigma in ({self.sigma_min / 2:g}, "
                             f"{self.sigma_max / 2:g}]; got pixel sigma {sigma_ve / 2:g}")
        return self.preconditioning(sigma_ve)

    def class_labels(self, x_ve: torch.Tensor) -> torch.Tensor | None:
        """The class of each noisy image: a function of the noisy input alone (or None, unconditional)."""
        if self.class_label is not None:
            return torch.full((x_ve.shape[0],), self.class_label, dtype=torch.long, device=x_ve.device)
        if self.label_classifier is None:
            return None
        out = self.label_classifier(((x_ve.detach() + 1.0) / 2.0).clamp(0.0, 1.0))
        return (out if out.ndim == 1 else out.argmax(dim=1)).long()

    def call_model(self, x: torch.Tensor, timesteps: torch.Tensor, **conditioning: Any) -> torch.Tensor:
        return run_unet(self.model, x, timesteps, self.dtype, **conditioning)

    def network_calls(self, sigma: float) -> int:
        """One UNet call, and one of the label classifier when it gives the class."""
        return 1 + (self.label_classifier is not None)

    def denoise(self, x_ve: torch.Tensor, plan: Preconditioning) -> torch.Tensor:
        out = self.model_output(plan.c_in * x_ve, plan.c_noise, class_labels=self.class_labels(x_ve))
        return (plan.c_skip * x_ve + plan.c_out * out).clamp(-1.0, 1.0)

    @classmethod
    def from_pretrained(cls, dir_or_id: str | os.PathLike, **kwargs: Any) -> "PreconditionedDenoiser":
        """A hub id or local folder (pipeline layout ``unet/`` + ``scheduler/``, or a bare UNet folder)."""
        import diffusers

        unet, scheduler = load_unet_and_scheduler(dir_or_id, default_scheduler=getattr(diffusers, cls.SCHEDULERS[0]))
        return cls(unet, scheduler, **kwargs)
