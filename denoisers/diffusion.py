"""The one denoising rule of diffusion denoised smoothing (Carlini et al., ICLR 2023), on the noise level itself.

The engine adds noise of std ``sigma`` to an image in [0, 1]. In the [-1, 1] images diffusion models
work in, that is ``x_ve = 2 (x + d) - 1 = x0 + sigma_VE eps`` at the variance-exploding noise level
``sigma_VE = 2 sigma``. Every family denoises ``x_ve`` at that level (one model call by default), clips
the estimate of x0 to [-1, 1] and maps it back to [0, 1] (`DiffusionDenoiser`); the families differ
only in how a model is told the level:

- variance-preserving models (``ddpm``, ``adm``; `VPDenoiser`) are called at the timestep t* whose
  ``sqrt((1 - abar_t) / abar_t)`` equals sigma_VE, on ``x_t = sqrt(abar_t*) x_ve``: the first t whose level
  reaches it (``first``, Carlini et al.), the nearest (``nearest``), or the fractional t where the
  schedule's level, interpolated in log sigma, is exactly sigma_VE (``exact``, as k-diffusion does);
- sigma-native models (``edm``, ``cm``; `denoisers.preconditioned`) are called at sigma_VE itself,
  through their own preconditioning (c_in, c_noise, c_skip, c_out).

Where the model is called is chosen once per sigma, as plain Python numbers (`DiffusionDenoiser.prepare`,
called by `certify.smoothing.Smoothed` at assembly), so a compiled pipeline never traces the schedule.

>>> import numpy as np
>>> betas = np.linspace(1e-4, 0.02, 1000)                # the linear DDPM schedule
>>> abar = np.cumprod(1 - betas)
>>> [timestep_for_sigma(abar, s) for s in (0.25, 0.5, 1.0)]
[145, 259, 396]
>>> round(timestep_for_sigma(abar, 0.25, rule="exact"), 3)
144.154
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from certify.rules import check_sigma

from .resizing import RESIZE_MODES, resize, resize_noise_gain

TimestepRule = Literal["first", "nearest", "exact"]
TIMESTEP_RULES = ("first", "nearest", "exact")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: The options of the VP rule a user sets (`VPDenoiser`): a family hands them on from its factory.
RULE_OPTIONS = ("timestep_rule", "num_steps", "eta", "resize")


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


def noise_level_at(alphas_cumprod: np.ndarray | torch.Tensor, t: float) -> float:
    """The schedule's level at a (fractional) t: ``log sqrt((1 - abar) / abar)`` interpolated linearly in t.

    >>> noise_level_at(np.array([0.8, 0.2]), 0.5)   # the geometric mean of 0.5 and 2.0
    1.0
    """
    ratio = noise_to_signal(alphas_cumprod)
    if float(t) == int(t):
        return float(ratio[int(t)])
    return float(np.exp(np.interp(float(t), np.arange(ratio.size), np.log(ratio))))


def timestep_for_noise_level(alphas_cumprod: np.ndarray | torch.Tensor, sigma_ve: float,
                             rule: TimestepRule = "first") -> int | float:
    """The timestep whose level ``sqrt((1 - abar_t) / abar_t)`` matches ``sigma_ve`` (noise std in [-1, 1]).

    ``first`` (Carlini et al.): the first t whose level reaches sigma_ve, so the model is told at least as
    much noise as there is; ``nearest``: the t whose level is closest; ``exact``: the fractional t between
    the two neighbouring timesteps where the level, interpolated linearly in log sigma, equals sigma_ve.

    >>> abar = np.array([0.9, 0.5, 0.1])                     # levels 0.33, 1.0, 3.0
    >>> [timestep_for_noise_level(abar, 0.5, rule) for rule in ("first", "nearest")]
    [1, 0]
    >>> round(timestep_for_noise_level(abar, 0.5, "exact"), 4)   # log(0.5 / 0.33) / log(1.0 / 0.33)
    0.3691
    """
    if not (isinstance(sigma_ve, (int, float)) and np.isfinite(sigma_ve) and sigma_ve > 0):
        raise ValueError(f"the noise level sigma_VE must be a positive number, got {sigma_ve!r}")
    ratio = noise_to_signal(alphas_cumprod)
    target = float(sigma_ve)
    if rule not in TIMESTEP_RULES:
        raise ValueError(f"timestep rule must be one of {', '.join(TIMESTEP_RULES)}, got {rule!r}")
    if rule == "nearest":
        return int(np.argmin(np.abs(ratio - target)))
    if target > ratio.max():
        raise ValueError(
            f"sigma={target / 2:g} needs a noise-to-signal ratio of {target:.4g} but the schedule only reaches "
            f"{ratio.max():.4g} (pixel sigma {ratio.max() / 2:.4g}); use a smaller sigma or rule='nearest'")
    if rule == "first":
        return int(np.nonzero(ratio >= target)[0][0])
    if not (ratio[0] > 0 and (np.diff(ratio) > 0).all()):
        raise ValueError("timestep_rule='exact' needs a schedule whose noise level rises strictly from above 0")
    if target < ratio[0]:
        raise ValueError(f"sigma={target / 2:g} lies below the schedule's first noise level (pixel sigma "
                         f"{ratio[0] / 2:.4g}): there is no timestep for it; use timestep_rule='first'")
    i = int(np.searchsorted(ratio, target))  # ratio[i - 1] < target <= ratio[i]
    if ratio[i] == target:
        return float(i)
    lo, hi = np.log(ratio[i - 1]), np.log(ratio[i])
    return (i - 1) + float((np.log(target) - lo) / (hi - lo))


def timestep_for_sigma(alphas_cumprod: np.ndarray | torch.Tensor, sigma: float,
                       rule: TimestepRule = "first") -> int | float:
    """`timestep_for_noise_level` for pixel-space ``sigma`` (level ``2 sigma`` in [-1, 1]).

    >>> timestep_for_sigma(np.array([0.9, 0.5, 0.1]), 0.25, rule="first")   # ratios 0.33, 1.0, 3.0
    1
    >>> timestep_for_sigma(np.array([0.9, 0.5, 0.1]), 0.25, rule="nearest")
    0
    """
    return timestep_for_noise_level(alphas_cumprod, 2.0 * check_sigma(sigma), rule)


class DiffusionDenoiser(nn.Module):
    """The rule every diffusion family shares: ``x_ve = 2 noisy - 1`` at level ``2 sigma``, the model's
    estimate of x0 clipped and mapped back to [0, 1], with the input checks and the optional resize.

    A family says where its model is called for a level (`make_plan`: plain Python numbers, computed
    once per sigma outside any compiled graph) and how it denoises with that plan (`denoise`); `call_model`
    adapts the network's signature. ``resize``: ``None`` (default): images must come at ``sample_size``,
    because smoothing noise must be added at the resolution the denoiser works at; a mode (``bilinear``,
    ``bicubic``, ``area``, ``nearest``) resizes the noisy image to the model's size and the estimate back,
    at the noise level left after resizing (`resize_noise_gain`).

    >>> den = VPDenoiser(lambda x, t: torch.zeros_like(x), np.linspace(0.99, 0.01, 100))
    >>> den.prepare(0.5)                                   # what Smoothed does at assembly
    >>> den.plan(0.5).t_star, [call.t for call in den.plan(0.5).calls]
    (50, [50])
    """

    def __init__(self, model: nn.Module, *, learned_variance: bool = False,
                 sample_size: int | tuple[int, int] | None = None, in_channels: int | None = None,
                 resize: str | None = None, name: str = "") -> None:
        super().__init__()
        if resize is not None and resize not in RESIZE_MODES:
            raise ValueError(f"resize must be None or one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.model = model
        self.learned_variance = bool(learned_variance)
        self.sample_size = (sample_size, sample_size) if isinstance(sample_size, int) else (
            tuple(sample_size) if sample_size else None)
        self.in_channels = in_channels
        self.resize = resize
        self.name = name
        self._plans: dict[tuple[float, tuple[int, int] | None], Any] = {}

    # -- what the families say ----------------------------------------------------------------------------
    def make_plan(self, sigma_ve: float) -> Any:
        """Where (and with which coefficients) the model is called at level ``sigma_ve``; Python numbers only."""
        raise NotImplementedError

    def denoise(self, x_ve: torch.Tensor, plan: Any) -> torch.Tensor:
        """The estimate of x0 in [-1, 1] from ``x_ve = x0 + sigma_VE eps`` (fp32) under ``plan``."""
        raise NotImplementedError

    def call_model(self, x: torch.Tensor, timesteps: torch.Tensor, **conditioning: Any) -> torch.Tensor:
        """The raw model output for fp32 ``x`` at ``timesteps`` (the model's own time input); subclasses adapt it."""
        return self.model(x, timesteps, **conditioning)

    def network_calls(self, sigma: float) -> int:
        """Model calls per denoised image at pixel ``sigma`` (the engine's cost per sample counts them)."""
        return 1

    # -- chosen once per sigma, outside the compiled graph ---------------------------------------------------
    def prepare(self, sigma: float) -> None:
        """Choose where the model is called at pixel ``sigma`` (for images at its size), once and eagerly.

        `certify.smoothing.Smoothed` calls it at assembly: a compiled forward then only looks the plan up,
        and a sigma the model cannot take is refused before anything runs.
        """
        self.plan(sigma)

    @torch.compiler.disable
    def plan(self, sigma: float, size: tuple[int, int] | None = None) -> Any:
        """The plan for pixel ``sigma``, cached; ``size``: the images' size when they are resized to the model's."""
        key = (float(sigma), size)
        if key not in self._plans:
            gain = resize_noise_gain(size, self.sample_size, self.resize) if size is not None else 1.0
            self._plans[key] = self.make_plan(2.0 * float(sigma) * gain)
        return self._plans[key]

    def model_output(self, x: torch.Tensor, t: int | float, **conditioning: Any) -> torch.Tensor:
        """One model call at time input ``t`` (integer timesteps stay integers), the channels checked; the
        second half of a learned-variance output is dropped (x0 does not need it)."""
        timesteps = torch.full((x.shape[0],), t, dtype=torch.long if isinstance(t, int) else torch.float32,
                               device=x.device)
        out = self.call_model(x, timesteps, **conditioning).float()
        channels = x.shape[1]
        if out.shape[1] not in (channels, 2 * channels) or (self.learned_variance and out.shape[1] != 2 * channels):
            raise ValueError(f"the diffusion model returned {out.shape[1]} channels for {channels}-channel images; "
                             f"expected {2 * channels if self.learned_variance else channels}")
        return out[:, :channels]

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

    def forward(self, noisy: torch.Tensor, sigma: float, chain_noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noisy = x + N(0, sigma^2)`` in pixel units (not clipped) -> estimate of x in [0, 1].

        ``chain_noise``: a stochastic chain's standard-normal numbers, ``(B, chain_noise_numbers(sigma, shape))``
        (`VPDenoiser`); the engine draws them from each image's own stream."""
        if noisy.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(noisy.shape)}")
        if self.in_channels is not None and noisy.shape[1] != self.in_channels:
            raise ValueError(f"the diffusion model takes {self.in_channels} channels, got images with "
                             f"{noisy.shape[1]}")
        self.check_image_size(tuple(noisy.shape))
        size = tuple(noisy.shape[-2:])
        x = noisy.float()
        resized = self.sample_size is not None and size != self.sample_size
        if resized:  # an explicit rule: the plan is made for the noise the model really gets
            x = resize(x, self.sample_size, self.resize)
        key = (float(sigma), size if resized else None)
        plan = self._plans[key] if key in self._plans else self.plan(*key)
        x0 = self.denoise(2.0 * x - 1.0, plan) if chain_noise is None else self.denoise(2.0 * x - 1.0, plan, chain_noise)
        if resized:
            x0 = resize(x0, size, self.resize)
        return ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)


@dataclass(frozen=True)
class VPCall:
    """One call of a variance-preserving model: its time input and ``sqrt(abar_t)``, ``sqrt(1 - abar_t)``."""

    t: int | float
    a: float
    b: float


@dataclass(frozen=True)
class VPPlan:
    """The calls from t* down, and between consecutive calls the DDIM move ``(c0, c1, std)``:
    ``x_s = c0 x0 + c1 eps + std z``."""

    t_star: int | float
    calls: tuple[VPCall, ...]
    moves: tuple[tuple[float, float, float], ...]


class VPDenoiser(DiffusionDenoiser):
    """A variance-preserving diffusion model (DDPM, ADM) at the timestep of sigma_VE (one call by default).

    Subclasses say how the model is called (`call_model`); the rest is `DiffusionDenoiser`'s rule.

    Args:
        model: the noise-prediction network.
        alphas_cumprod: its training schedule (``abar_t`` for t = 0 .. T - 1).
        prediction_type: what the model predicts: ``epsilon``, ``v_prediction`` or ``sample`` (x0).
        learned_variance: the model outputs twice the image channels; the first half is the prediction.
        timestep_scale: the model is called with ``t * timestep_scale`` (improved-diffusion's
            ``rescale_timesteps`` sees t in 0..1000 whatever T is); 1 = integer timesteps.
        sample_size, in_channels: the image size and channels the model denoises (None = any).
        timestep_rule: ``"first"`` (default, Carlini et al.), ``"nearest"`` or ``"exact"`` (a fractional
            timestep, at exactly sigma_VE); see `timestep_for_noise_level`.
        num_steps: 1 = one-shot (default). More runs the reverse chain from t* down to 0 in that many
            model calls on evenly spaced timesteps (the comparison in the paper; it tends to hallucinate).
        eta: noise of the multi-step chain: 0 = deterministic DDIM (default), 1 = DDPM ancestral sampling.
            With eta > 0 and more than one call the chain is stochastic: each run takes its standard-normal
            numbers as ``chain_noise`` (`chain_noise_numbers` of them per image), which the engine draws from
            the image's own "vote" stream, so runs are reproducible and DensePure's vote can tell them apart.
        resize: see `DiffusionDenoiser`.

    >>> den = VPDenoiser(lambda x, t: torch.zeros_like(x), np.linspace(0.99, 0.01, 100))
    >>> den.timestep(0.5), round(den.implied_sigma(0.5), 3)
    (50, 0.505)
    """

    def __init__(self, model: nn.Module, alphas_cumprod: np.ndarray | torch.Tensor, *,
                 prediction_type: str = "epsilon", learned_variance: bool = False, timestep_scale: float = 1.0,
                 sample_size: int | tuple[int, int] | None = None, in_channels: int | None = None,
                 timestep_rule: TimestepRule = "first", num_steps: int = 1, eta: float = 0.0,
                 resize: str | None = None, name: str = "") -> None:
        super().__init__(model, learned_variance=learned_variance, sample_size=sample_size,
                         in_channels=in_channels, resize=resize, name=name)
        if timestep_rule not in TIMESTEP_RULES:
            raise ValueError(f"timestep_rule must be one of {', '.join(TIMESTEP_RULES)}, got {timestep_rule!r}")
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if not (isinstance(eta, (int, float)) and 0.0 <= float(eta) <= 1.0):
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        abar = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64) if not torch.is_tensor(alphas_cumprod)
                               else alphas_cumprod.detach().cpu().double())
        noise_to_signal(abar)  # validates
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)
        self.abar64 = abar.numpy()  # t* is chosen in float64, as the reference implementations do
        self.prediction_type = prediction_type
        self.timestep_scale = float(timestep_scale)
        self.timestep_rule = timestep_rule
        self.num_steps = num_steps
        self.eta = float(eta)

    # -- the sigma <-> t* correspondence ------------------------------------------------------------------
    def timestep(self, sigma: float) -> int | float:
        """t* for pixel-space ``sigma`` under this denoiser's rule (a float under ``exact``)."""
        return timestep_for_sigma(self.abar64, float(sigma), self.timestep_rule)

    def implied_sigma(self, sigma: float) -> float:
        """The pixel-space noise level the model is told at t*: ``sqrt((1 - abar_t*) / abar_t*) / 2``.

        With the ``first`` rule this is >= ``sigma``; the gap shows how coarse the schedule is there.
        """
        return noise_level_at(self.abar64, self.timestep(sigma)) / 2.0

    def abar(self, t: int | float) -> torch.Tensor:
        """``abar_t`` as a 0-dim fp32 CPU tensor: the schedule's at an integer t, ``1 / (1 + level(t)^2)`` at a
        fractional one (the level interpolated in log sigma, as `timestep_for_noise_level` chose t)."""
        if float(t) == int(t):
            return self.alphas_cumprod[int(t)].cpu()
        return torch.tensor(1.0 / (1.0 + noise_level_at(self.abar64, t) ** 2), dtype=torch.float32)

    def call_at(self, t: int | float) -> VPCall:
        abar = self.abar(t)
        time = t if isinstance(t, int) and self.timestep_scale == 1.0 else float(t * self.timestep_scale)
        return VPCall(time, float(abar.sqrt()), float((1 - abar).sqrt()))

    def chain_timesteps(self, t_star: int | float) -> list[int | float]:
        """The timesteps of the model calls: ``[t*]`` one-shot, else ``num_steps`` evenly spaced down from t*."""
        steps = min(self.num_steps, int(t_star) + 1)
        ts = [t_star, *(int(round(t_star * (steps - i) / steps)) for i in range(1, steps))]
        return sorted(set(ts), reverse=True)

    def make_plan(self, sigma_ve: float) -> VPPlan:
        t_star = timestep_for_noise_level(self.abar64, sigma_ve, self.timestep_rule)
        ts = self.chain_timesteps(t_star)
        moves = []
        for t, s in zip(ts, ts[1:]):  # generalized (DDIM) step t -> s; eta = 1 is the DDPM posterior q(x_s | x_t, x0)
            abar_t, abar_s = self.abar(t), self.abar(s)
            std = self.eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).clamp(min=0).sqrt()
            moves.append((float(abar_s.sqrt()), float((1 - abar_s - std ** 2).clamp(min=0).sqrt()), float(std)))
        return VPPlan(t_star, tuple(self.call_at(t) for t in ts), tuple(moves))

    # -- what one run costs and draws ------------------------------------------------------------------------
    def network_calls(self, sigma: float) -> int:
        """Model calls of one run at pixel ``sigma``: 1 one-shot, the chain's length otherwise."""
        return len(self.plan(sigma).calls)

    def chain_noise_numbers(self, sigma: float, shape: tuple[int, ...]) -> int:
        """Standard-normal numbers one run draws per image of ``shape`` (C, H, W) at pixel ``sigma``: one image,
        at the size the model works at, per move of a stochastic chain (eta > 0); 0 when the run is deterministic.

        >>> den = VPDenoiser(lambda x, t: torch.zeros_like(x), np.linspace(0.99, 0.01, 100), num_steps=3, eta=1.0)
        >>> den.chain_noise_numbers(0.5, (1, 4, 4)), VPDenoiser(den.model, den.abar64).chain_noise_numbers(0.5, (1, 4, 4))
        (32, 0)
        """
        if self.eta == 0:
            return 0
        size = tuple(shape[-2:])
        resized = self.sample_size is not None and size != self.sample_size and self.resize is not None
        h, w = self.sample_size if resized else size
        return len(self.plan(sigma, size if resized else None).moves) * int(shape[-3]) * h * w

    # -- the model calls ----------------------------------------------------------------------------------
    def x0_and_eps(self, x_t: torch.Tensor, call: VPCall) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipped clean estimate x0 in [-1, 1] and the noise consistent with it, from one call."""
        a, b = call.a, call.b
        out = self.model_output(x_t, call.t)
        if self.prediction_type == "epsilon":
            x0 = (x_t - b * out) / a
        elif self.prediction_type == "v_prediction":
            x0 = a * x_t - b * out
        else:
            x0 = out
        x0 = x0.clamp(-1.0, 1.0)
        return x0, (x_t - a * x0) / b

    def predict_x0_eps(self, x_t: torch.Tensor, t: int | float) -> tuple[torch.Tensor, torch.Tensor]:
        """`x0_and_eps` at timestep ``t`` (eager; the engine's calls go through the prepared plan)."""
        return self.x0_and_eps(x_t, self.call_at(t))

    def denoise(self, x_ve: torch.Tensor, plan: VPPlan, chain_noise: torch.Tensor | None = None) -> torch.Tensor:
        """The chain from t* down; a stochastic one (eta > 0) adds ``std z`` at each move, z the next image of
        ``chain_noise`` (B, moves * C * H * W), each sample's numbers in move order."""
        z = None
        if self.eta > 0 and plan.moves:
            wanted = (x_ve.shape[0], len(plan.moves) * x_ve[0].numel())
            if chain_noise is None or tuple(chain_noise.shape) != wanted:
                got = "none" if chain_noise is None else tuple(chain_noise.shape)
                raise ValueError(f"a stochastic chain (eta={self.eta:g}, {len(plan.calls)} calls) takes its noise as "
                                 f"chain_noise of shape {wanted} (standard normal, fp32), got {got}; the engine draws "
                                 f"it from each image's stream")
            z = chain_noise.float().view(x_ve.shape[0], len(plan.moves), *x_ve.shape[1:])
        x_t = plan.calls[0].a * x_ve  # sqrt(abar_t*) (x0 + sigma_VE eps): the forward process at t*
        for i, call in enumerate(plan.calls):
            x0, eps = self.x0_and_eps(x_t, call)
            if i < len(plan.moves):
                c0, c1, std = plan.moves[i]
                x_t = c0 * x0 + c1 * eps
                if z is not None:
                    x_t = x_t + std * z[:, i]
        return x0
