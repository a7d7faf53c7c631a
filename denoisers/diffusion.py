"""The one denoising rule of diffusion denoised smoothing (Carlini et al., ICLR 2023), for every model family.

Gaussian noise added for smoothing is the forward process of a diffusion model at some timestep t*.
The model works in [-1, 1], where pixel noise ``sigma`` becomes ``2 sigma``; t* is the timestep whose
noise-to-signal ratio ``sqrt((1 - abar_t) / abar_t)`` matches ``2 sigma``. The engine adds the noise at
exactly ``sigma``; this module only rescales ``x_t = sqrt(abar_t*) * (2 * noisy - 1)`` (so
``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` up to the rounding of t*), calls the model once at t*,
keeps the eps half of a learned-variance output, forms x0, clips it to [-1, 1] and maps it to [0, 1].

`DiffusionDenoiser` is that rule; the families differ only in how the model is built and called:
``ddpm`` (diffusers ``UNet2DModel``, integer timesteps) and ``adm`` (OpenAI's guided-/improved-diffusion
UNet, timesteps optionally rescaled to 0..1000).

>>> import numpy as np
>>> betas = np.linspace(1e-4, 0.02, 1000)                # the linear DDPM schedule
>>> abar = np.cumprod(1 - betas)
>>> [timestep_for_sigma(abar, s) for s in (0.25, 0.5, 1.0)]
[145, 259, 396]
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TimestepRule = Literal["first", "nearest"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
RESIZE_MODES = ("nearest", "bilinear", "bicubic", "area")


def noise_to_signal(alphas_cumprod: np.ndarray | torch.Tensor) -> np.ndarray:
    """``sqrt((1 - abar_t) / abar_t)`` for every t: the noise level of x_t / sqrt(abar_t) in [-1, 1].

    >>> noise_to_signal(np.array([0.8, 0.2])).round(3).tolist()
    [0.5, 2.0]
    """
    abar = np.asarray(alphas_cumprod.detach().cpu() if torch.is_tensor(alphas_cumprod) else alphas_cumprod,
                      dtype=np.float64)
    if abar.ndim != 1 or abar.size == 0 or not ((abar > 0) & (abar <= 1)).all():
        raise ValueError(f"alphas_cumprod must be a non-empty 1-D array in (0, 1], got shape {abar.shape}")
    return np.sqrt((1.0 - abar) / abar)


def timestep_for_sigma(alphas_cumprod: np.ndarray | torch.Tensor, sigma: float, rule: TimestepRule = "first") -> int:
    """The timestep t* whose noise level in [-1, 1] matches pixel-space ``sigma`` (i.e. ``2 sigma``).

    ``rule="first"`` (Carlini et al.): the first t with ``sqrt((1 - abar_t) / abar_t) >= 2 sigma``, so the
    model is told at least as much noise as there is. ``rule="nearest"``: the t whose ratio is closest.

    >>> timestep_for_sigma(np.array([0.9, 0.5, 0.1]), 0.25, rule="first")   # ratios 0.33, 1.0, 3.0
    1
    >>> timestep_for_sigma(np.array([0.9, 0.5, 0.1]), 0.25, rule="nearest")
    0
    """
    if not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    ratio = noise_to_signal(alphas_cumprod)
    target = 2.0 * float(sigma)
    if rule == "first":
        above = np.nonzero(ratio >= target)[0]
        if above.size == 0:
            raise ValueError(
                f"sigma={sigma} needs a noise-to-signal ratio of {target:.4g} but the schedule only reaches "
                f"{ratio.max():.4g} (pixel sigma {ratio.max() / 2:.4g}); use a smaller sigma or rule='nearest'"
            )
        return int(above[0])
    if rule == "nearest":
        return int(np.argmin(np.abs(ratio - target)))
    raise ValueError(f"timestep rule must be 'first' or 'nearest', got {rule!r}")


def resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``F.interpolate`` as the denoisers use it (``align_corners=False`` for the smooth modes)."""
    extra = {} if mode in ("nearest", "area") else {"align_corners": False}
    return F.interpolate(images, size=size, mode=mode, **extra)


@functools.lru_cache(maxsize=64)
def resize_noise_gain(source: tuple[int, int], target: tuple[int, int], mode: str) -> float:
    """How much a `resize` scales the std of white noise: root mean square over the output pixels.

    A resize is linear and separable, so each output pixel's noise variance is the product of the
    sums of its squared weights along each axis; the weights are read off by resizing the identity.

    >>> round(resize_noise_gain((512, 512), (256, 256), "bilinear"), 3)   # mean of 2 x 2 pixels
    0.5
    >>> resize_noise_gain((28, 28), (28, 28), "bicubic")
    1.0
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")

    def energy(n_in: int, n_out: int) -> torch.Tensor:
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1)
        weights = resize(eye, (n_out, 1), mode).reshape(n_in, n_out)  # [input pixel, output pixel]
        return (weights ** 2).sum(0)

    rows, cols = energy(source[0], target[0]), energy(source[1], target[1])
    return float(torch.outer(rows, cols).mean().sqrt())


class DiffusionDenoiser(nn.Module):
    """Denoise ``x + N(0, sigma^2)`` with a diffusion model at the matching timestep t* (one call by default).

    Subclasses say how the model is called (`call_model`); everything else is here, once.

    Args:
        model: the noise-prediction network.
        alphas_cumprod: its training schedule (``abar_t`` for t = 0 .. T - 1).
        prediction_type: what the model predicts: ``epsilon``, ``v_prediction`` or ``sample`` (x0).
        learned_variance: the model outputs twice the image channels; the first half is the prediction.
        timestep_scale: the model is called with ``t * timestep_scale`` (improved-diffusion's
            ``rescale_timesteps`` sees t in 0..1000 whatever T is); 1 = integer timesteps.
        sample_size, in_channels: the image size and channels the model denoises (None = any).
        timestep_rule: ``"first"`` (default, Carlini et al.) or ``"nearest"``; see `timestep_for_sigma`.
        num_steps: 1 = one-shot (default). More runs the reverse chain from t* down to 0 in that many
            model calls on evenly spaced timesteps (the comparison in the paper; it tends to hallucinate).
        eta: noise of the multi-step chain: 0 = deterministic DDIM (default), 1 = DDPM ancestral sampling.
            eta > 0 draws from the global torch RNG, so such runs are not reproducible by the engine's seed.
        resize: ``None`` (default): images must come at ``sample_size``, because smoothing noise must be
            added at the resolution the denoiser works at. A mode (``bilinear``, ``bicubic``, ``area``,
            ``nearest``) resizes the noisy image to the model's size and the estimate back, choosing t*
            for the noise level left after resizing (`resize_noise_gain`).

    >>> den = DiffusionDenoiser(lambda x, t: torch.zeros_like(x), np.linspace(0.99, 0.01, 100))
    >>> den.timestep(0.5), round(den.implied_sigma(0.5), 3)
    (50, 0.505)
    """

    def __init__(self, model: nn.Module, alphas_cumprod: np.ndarray | torch.Tensor, *,
                 prediction_type: str = "epsilon", learned_variance: bool = False, timestep_scale: float = 1.0,
                 sample_size: int | tuple[int, int] | None = None, in_channels: int | None = None,
                 timestep_rule: TimestepRule = "first", num_steps: int = 1, eta: float = 0.0,
                 resize: str | None = None, name: str = "") -> None:
        super().__init__()
        if timestep_rule not in ("first", "nearest"):
            raise ValueError(f"timestep_rule must be 'first' or 'nearest', got {timestep_rule!r}")
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if not (isinstance(eta, (int, float)) and 0.0 <= float(eta) <= 1.0):
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        if resize is not None and resize not in RESIZE_MODES:
            raise ValueError(f"resize must be None or one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        abar = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64) if not torch.is_tensor(alphas_cumprod)
                               else alphas_cumprod.detach().cpu().double())
        noise_to_signal(abar)  # validates
        self.model = model
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)
        self._abar64 = abar.numpy()  # t* is chosen in float64, as the reference implementations do
        self.prediction_type = prediction_type
        self.learned_variance = bool(learned_variance)
        self.timestep_scale = float(timestep_scale)
        self.sample_size = (sample_size, sample_size) if isinstance(sample_size, int) else (
            tuple(sample_size) if sample_size else None)
        self.in_channels = in_channels
        self.timestep_rule = timestep_rule
        self.num_steps = num_steps
        self.eta = float(eta)
        self.resize = resize
        self.name = name
        self._timesteps: dict[float, int] = {}

    # -- how the model is called: the one thing the families differ in ------------------------------------
    def call_model(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The raw model output for fp32 ``x_t`` at ``timesteps`` (already scaled); subclasses adapt it."""
        return self.model(x_t, timesteps)

    # -- the sigma <-> t* correspondence ------------------------------------------------------------------
    def timestep(self, sigma: float) -> int:
        """t* for pixel-space ``sigma`` under this denoiser's rule (cached per sigma)."""
        if float(sigma) not in self._timesteps:
            self._timesteps[float(sigma)] = timestep_for_sigma(self._abar64, float(sigma), self.timestep_rule)
        return self._timesteps[float(sigma)]

    def implied_sigma(self, sigma: float) -> float:
        """The pixel-space noise level the model is told at t*: ``sqrt((1 - abar_t*) / abar_t*) / 2``.

        With the ``first`` rule this is >= ``sigma``; the gap shows how coarse the schedule is there.
        """
        return float(noise_to_signal(self._abar64)[self.timestep(sigma)] / 2.0)

    def check_image_size(self, shape: tuple[int, ...]) -> None:
        """Refuse images of another size than the model's unless a resize rule was asked for (one line)."""
        size = tuple(shape[-2:])
        if self.sample_size is None or size == self.sample_size or self.resize is not None:
            return
        h, w = self.sample_size
        raise ValueError(
            f"the diffusion denoiser {self.name or type(self).__name__} works at {h}x{w} but the images are "
            f"{size[0]}x{size[1]}: smoothing noise must be added at the resolution the denoiser works at "
            f"(resizing a noisy image changes its noise level, so t* would not match sigma). Load the data at "
            f"{h} px (--dataset-arg size={h}) and let the classifier resize the denoised image to its own input "
            f"size, or ask for an explicit rule (--denoiser-arg resize=bilinear, bicubic, area or nearest): "
            f"t* is then chosen for the noise level left after resizing")

    # -- one model call -----------------------------------------------------------------------------------
    def _model_output(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        if self.timestep_scale == 1.0:
            timesteps = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        else:
            timesteps = torch.full((x_t.shape[0],), t * self.timestep_scale, dtype=torch.float32, device=x_t.device)
        out = self.call_model(x_t, timesteps).float()
        channels = x_t.shape[1]
        if out.shape[1] not in (channels, 2 * channels) or (self.learned_variance and out.shape[1] != 2 * channels):
            raise ValueError(f"the diffusion model returned {out.shape[1]} channels for {channels}-channel images; "
                             f"expected {2 * channels if self.learned_variance else channels}")
        return out[:, :channels]  # a learned variance's second half is not needed for x0

    def predict_x0_eps(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipped clean estimate x0 in [-1, 1] and the noise consistent with it, from one call at ``t``."""
        abar = self.alphas_cumprod[t].to(x_t.device)
        a, b = abar.sqrt(), (1 - abar).sqrt()
        out = self._model_output(x_t, t)
        if self.prediction_type == "epsilon":
            x0 = (x_t - b * out) / a
        elif self.prediction_type == "v_prediction":
            x0 = a * x_t - b * out
        else:
            x0 = out
        x0 = x0.clamp(-1.0, 1.0)
        return x0, (x_t - a * x0) / b

    def chain_timesteps(self, t_star: int) -> list[int]:
        """The timesteps of the model calls: ``[t*]`` one-shot, else ``num_steps`` evenly spaced down from t*."""
        steps = min(self.num_steps, t_star + 1)
        ts = [int(round(t_star * (steps - i) / steps)) for i in range(steps)]
        return sorted(set(ts), reverse=True)

    def _reverse_chain(self, x_t: torch.Tensor, t_star: int) -> torch.Tensor:
        ts = self.chain_timesteps(t_star)
        x0 = x_t
        for i, t in enumerate(ts):
            x0, eps = self.predict_x0_eps(x_t, t)
            if i + 1 == len(ts):
                break
            # Generalized (DDIM) step t -> s; eta = 1 is the DDPM posterior q(x_s | x_t, x0).
            s = ts[i + 1]
            abar_t, abar_s = self.alphas_cumprod[t].to(x_t.device), self.alphas_cumprod[s].to(x_t.device)
            std = self.eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).clamp(min=0).sqrt()
            x_t = abar_s.sqrt() * x0 + (1 - abar_s - std ** 2).clamp(min=0).sqrt() * eps
            if self.eta > 0:
                x_t = x_t + std * torch.randn_like(x_t)
        return x0

    # -- the denoiser interface ---------------------------------------------------------------------------
    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        """``noisy = x + N(0, sigma^2)`` in pixel units (not clipped) -> estimate of x in [0, 1]."""
        if noisy.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(noisy.shape)}")
        if self.in_channels is not None and noisy.shape[1] != self.in_channels:
            raise ValueError(f"the diffusion model takes {self.in_channels} channels, got images with "
                             f"{noisy.shape[1]}")
        self.check_image_size(tuple(noisy.shape))
        size = tuple(noisy.shape[-2:])
        x, level = noisy.float(), float(sigma)
        resized = self.sample_size is not None and size != self.sample_size
        if resized:  # an explicit rule: t* for the noise the model really gets
            x = resize(x, self.sample_size, self.resize)
            level *= resize_noise_gain(size, self.sample_size, self.resize)
        t_star = self.timestep(level)
        x_t = self.alphas_cumprod[t_star].to(x.device).sqrt() * (2.0 * x - 1.0)
        x0 = self._reverse_chain(x_t, t_star)
        if resized:
            x0 = resize(x0, size, self.resize)
        return ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)
