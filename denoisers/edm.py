"""The ``edm`` denoiser: an EDM-preconditioned diffusers UNet (Karras et al., NeurIPS 2022), one call at sigma_VE.

EDM trains the network F on the noise level itself: ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)``
with ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)``, ``c_out = sigma sigma_data / sqrt(sigma^2 +
sigma_data^2)`` (negated for v-prediction), ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``, ``c_noise =
ln(sigma) / 4`` (Table 1; diffusers' ``EDMEulerScheduler.precondition_inputs / precondition_noise /
precondition_outputs``). The denoising rule is `denoisers.diffusion`'s at sigma_VE = 2 sigma; model,
loading and class labels are `denoisers.preconditioned`'s.

Specs: ``edm:FOLDER`` or ``edm:HUB_ID`` holding a ``UNet2DModel`` and an ``EDMEulerScheduler`` (or
``EDMDPMSolverMultistepScheduler``) config; options ``dtype``, ``class_label``, ``label_classifier``,
``resize``.

>>> p = edm_preconditioning(1.0, sigma_data=0.5)
>>> round(p.c_in, 4), round(p.c_skip, 4), round(p.c_out, 4), p.c_noise
(0.8944, 0.2, 0.4472, 0.0)
"""

from __future__ import annotations

import math
from typing import Any

from . import register_denoiser
from .preconditioned import PreconditionedDenoiser, Preconditioning


def edm_preconditioning(sigma: float, sigma_data: float, v_prediction: bool = False) -> Preconditioning:
    """EDM's coefficients at noise level ``sigma`` (in [-1, 1] units)."""
    norm = math.sqrt(sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / norm
    return Preconditioning(sigma, 1.0 / norm, 0.25 * math.log(sigma), sigma_data ** 2 / norm ** 2,
                           -c_out if v_prediction else c_out)


class EDMDenoiser(PreconditionedDenoiser):
    """An EDM-preconditioned UNet; ``prediction_type`` (``epsilon`` = F, or ``v_prediction``) from the scheduler."""

    SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")

    def __init__(self, unet: Any, scheduler: Any, **options: Any) -> None:
        kind = scheduler.config.get("prediction_type", "epsilon")
        if kind not in ("epsilon", "v_prediction"):
            raise ValueError(f"edm: prediction_type must be epsilon or v_prediction, got {kind!r}")
        super().__init__(unet, scheduler, **options)
        self.v_prediction = kind == "v_prediction"

    def preconditioning(self, sigma: float) -> Preconditioning:
        return edm_preconditioning(sigma, self.sigma_data, self.v_prediction)


@register_denoiser("edm", summary="edm:<folder or hub id>: EDM-preconditioned diffusers UNet at sigma itself, one call")
def create_edm(identifier: str | None = None, **kwargs: Any) -> EDMDenoiser:
    """A diffusers UNet + EDM scheduler as a one-shot denoiser; keyword options go to `EDMDenoiser`."""
    if identifier is None:
        raise ValueError("denoiser 'edm' needs a folder or hub id holding a UNet2DModel and an EDM scheduler")
    return EDMDenoiser.from_pretrained(identifier, **kwargs)
