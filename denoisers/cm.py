"""The ``cm`` denoiser: a consistency model (Song et al., ICML 2023) as a one-step denoiser, via diffusers.

A consistency model maps a noisy image at any level straight to its clean end point, so one call at
sigma_VE = 2 sigma denoises (the idea of Consistency Purification, NeurIPS 2024). Its parameterization
(Song et al., Appendix C; diffusers' ``CMStochasticIterativeScheduler``):
``x0 = c_skip x + c_out F(c_in x, t)`` with ``c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)``,
``c_out = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2)`` (``get_scalings_for_boundary_condition``),
``c_in = 1 / sqrt(sigma^2 + sigma_data^2)`` (``scale_model_input``) and the time input
``t = 1000 * 0.25 * ln(sigma + 1e-44)`` (``sigma_to_t``, as diffusers' ``ConsistencyModelPipeline`` feeds it).
The rule is `denoisers.diffusion`'s; model, loading and class labels are `denoisers.preconditioned`'s.

Specs: ``cm:HUB_ID`` or ``cm:FOLDER`` (pipeline layout ``unet/`` + ``scheduler/``, or a bare UNet folder):
``cm:openai/diffusers-cd_imagenet64_l2``, ``cm:openai/diffusers-cd_imagenet64_lpips`` (distilled from
EDM) and ``cm:openai/diffusers-ct_imagenet64`` (trained alone): 64 px, class-conditional, so they need
``class_label=K`` or ``label_classifier=SPEC`` (see `denoisers.preconditioned`). Options ``dtype``,
``class_label``, ``label_classifier``, ``resize``.

>>> p = cm_preconditioning(0.5, sigma_data=0.5, sigma_min=0.002)
>>> round(p.c_skip, 4), round(p.c_out, 4), round(p.c_noise, 2)
(0.502, 0.3521, -173.29)
"""

from __future__ import annotations

import math
from typing import Any

from . import register_denoiser
from .preconditioned import PreconditionedDenoiser, Preconditioning


def cm_preconditioning(sigma: float, sigma_data: float, sigma_min: float) -> Preconditioning:
    """A consistency model's coefficients at noise level ``sigma`` (in [-1, 1] units)."""
    norm = math.sqrt(sigma ** 2 + sigma_data ** 2)
    return Preconditioning(sigma, 1.0 / norm, 1000 * 0.25 * math.log(sigma + 1e-44),
                           sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2),
                           (sigma - sigma_min) * sigma_data / norm)


class CMDenoiser(PreconditionedDenoiser):
    """A consistency model's UNet under its boundary-condition parameterization (see the module docstring)."""

    SCHEDULERS = ("CMStochasticIterativeScheduler",)

    def preconditioning(self, sigma: float) -> Preconditioning:
        return cm_preconditioning(sigma, self.sigma_data, self.sigma_min)


@register_denoiser("cm", summary="cm:<folder or hub id>: consistency model (diffusers), one call at sigma itself")
def create_cm(identifier: str | None = None, **kwargs: Any) -> CMDenoiser:
    """A diffusers UNet + CMStochasticIterativeScheduler as a one-step denoiser; options go to `CMDenoiser`."""
    if identifier is None:
        raise ValueError("denoiser 'cm' needs a folder or hub id, e.g. 'cm:openai/diffusers-cd_imagenet64_l2' "
                         "(with class_label=K or label_classifier=SPEC)")
    return CMDenoiser.from_pretrained(identifier, **kwargs)
