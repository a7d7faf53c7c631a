"""The ``ddpm`` denoiser: one step of a pretrained diffusion model (Carlini et al., ICLR 2023).

Diffusion denoised smoothing treats Gaussian noise added for smoothing as the forward process of a
DDPM at some timestep t*. A diffusion model works in [-1, 1], so pixel noise ``sigma`` becomes
``2 sigma`` there; the timestep whose noise-to-signal ratio ``sqrt((1 - abar_t) / abar_t)`` matches
``2 sigma`` is t*. The engine adds the noise at exactly ``sigma`` in pixel space; this module only
rescales ``x_t = sqrt(abar_t*) * (2 * noisy - 1)`` (so ``x_t = sqrt(abar) x0 + sqrt(abar) 2 sigma eps``),
calls the UNet once at t*, forms the clean estimate x0, clips it to [-1, 1] and maps it back to
[0, 1]. It never calls the scheduler's own ``add_noise``.

Specs: ``ddpm:<local folder>`` or ``ddpm:<hub id>`` (e.g. ``ddpm:google/ddpm-cifar10-32``) holding either
a ``UNet2DModel`` folder or the pipeline layout with ``unet/`` and ``scheduler/`` subfolders.

>>> import numpy as np
>>> from diffusers import DDPMScheduler
>>> abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.numpy()
>>> [timestep_for_sigma(abar, s) for s in (0.25, 0.5, 1.0)]
[145, 259, 396]
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import register_denoiser

log = logging.getLogger(__name__)

TimestepRule = Literal["first", "nearest"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


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


def _alphas_cumprod_of(scheduler: Any) -> torch.Tensor:
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(
            f"scheduler {type(scheduler).__name__} defines no alphas_cumprod; expected a DDPM-style diffusers "
            "scheduler (DDPMScheduler, DDIMScheduler, ...)"
        )
    return torch.as_tensor(abar, dtype=torch.float64).detach().cpu()


class DiffusionDenoiser(nn.Module):
    """Denoise ``x + N(0, sigma^2)`` with a diffusion UNet at the matching timestep t* (one call by default).

    Args:
        unet: a diffusers ``UNet2DModel`` (or any module ``unet(x, t).sample`` / ``unet(x, t)[0]``).
        scheduler: a diffusers scheduler with ``alphas_cumprod`` (and ``config.prediction_type``).
        timestep_rule: ``"first"`` (default, Carlini et al.) or ``"nearest"``; see `timestep_for_sigma`.
        num_steps: 1 = one-shot (default). More runs the reverse chain from t* down to 0 in that many
            model calls on evenly spaced timesteps (the comparison in the paper; it tends to hallucinate).
        eta: noise of the multi-step chain: 0 = deterministic DDIM (default), 1 = DDPM ancestral sampling
            (the paper's chain). eta > 0 draws from the global torch RNG, so such runs are not reproducible
            by the engine's seed (one-shot and eta = 0 are deterministic functions of the noisy image).
        resize: interpolation mode used when the image size differs from ``unet.config.sample_size``:
            the noisy image is resized to the model's size and the estimate back to the input size.
            ``None`` makes a size mismatch an error. Resizing changes the per-pixel noise level, so t*
            (computed from sigma) is then only approximately matched.
        dtype: run the UNet in this dtype (e.g. ``torch.float16`` / ``torch.bfloat16`` on a GPU); the
            noise and the x_t / x0 arithmetic stay in fp32.
        prediction_type: overrides ``scheduler.config.prediction_type``.

    >>> from diffusers import DDPMScheduler, UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8),
    ...                    down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
    ...                    layers_per_block=1, norm_num_groups=4)
    >>> den = DiffusionDenoiser(unet, DDPMScheduler())
    >>> den.timestep(0.5), round(den.implied_sigma(0.5), 3)
    (259, 0.502)
    >>> den(torch.rand(2, 1, 8, 8), 0.5).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(self, unet: nn.Module, scheduler: Any, timestep_rule: TimestepRule = "first",
                 num_steps: int = 1, eta: float = 0.0, resize: str | None = "bilinear",
                 dtype: torch.dtype | str | None = None, prediction_type: str | None = None) -> None:
        super().__init__()
        if timestep_rule not in ("first", "nearest"):
            raise ValueError(f"timestep_rule must be 'first' or 'nearest', got {timestep_rule!r}")
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if not (0.0 <= float(eta) <= 1.0):
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        if resize not in (None, "nearest", "bilinear", "bicubic", "area"):
            raise ValueError(f"resize must be None, 'nearest', 'bilinear', 'bicubic' or 'area', got {resize!r}")
        self.unet = unet
        self.scheduler = scheduler
        abar = _alphas_cumprod_of(scheduler)
        noise_to_signal(abar)  # validates
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)
        config = getattr(scheduler, "config", {})
        self.prediction_type = prediction_type or config.get("prediction_type", "epsilon") or "epsilon"
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        ucfg = getattr(unet, "config", {})
        self.in_channels = ucfg.get("in_channels")
        out_channels = ucfg.get("out_channels", self.in_channels)
        variance_type = config.get("variance_type") or ""
        # A learned variance doubles the output channels; the first half is the prediction.
        self.learned_variance = (self.in_channels is not None and out_channels == 2 * self.in_channels) or \
            variance_type in ("learned", "learned_range")
        sample_size = ucfg.get("sample_size")
        self.sample_size = (sample_size, sample_size) if isinstance(sample_size, int) else (
            tuple(sample_size) if sample_size else None)
        self.timestep_rule = timestep_rule
        self.num_steps = num_steps
        self.eta = float(eta)
        self.resize = resize
        if isinstance(dtype, str):
            dtype = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
                     "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}.get(dtype, dtype)
            if isinstance(dtype, str):
                raise ValueError(f"dtype must be fp32, fp16 or bf16, got {dtype!r}")
        self.dtype = dtype
        if dtype is not None:
            self.unet.to(dtype)
        self._timesteps: dict[tuple[float, str], int] = {}

    # -- the sigma <-> t* correspondence ------------------------------------------------------------------
    def timestep(self, sigma: float) -> int:
        """t* for pixel-space ``sigma`` under this denoiser's rule (cached per sigma)."""
        key = (float(sigma), self.timestep_rule)
        if key not in self._timesteps:
            self._timesteps[key] = timestep_for_sigma(self.alphas_cumprod, float(sigma), self.timestep_rule)
        return self._timesteps[key]

    def implied_sigma(self, sigma: float) -> float:
        """The pixel-space noise level the model is told at t*: ``sqrt((1 - abar_t*) / abar_t*) / 2``.

        With the ``first`` rule this is >= ``sigma``; the gap shows how coarse the schedule is there.
        """
        abar = float(self.alphas_cumprod[self.timestep(sigma)])
        return float(np.sqrt((1.0 - abar) / abar) / 2.0)

    # -- one model call -----------------------------------------------------------------------------------
    def _model_output(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        dtype = self.dtype or next(self.unet.parameters()).dtype
        timesteps = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        out = self.unet(x_t.to(dtype), timesteps)
        out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, (tuple, list)) else out
        out = out.float()
        if self.learned_variance:
            out = out[:, : x_t.shape[1]]
        return out

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

    # -- the denoiser interface ---------------------------------------------------------------------------
    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        """``noisy = x + N(0, sigma^2)`` in pixel units (not clipped) -> estimate of x in [0, 1]."""
        if noisy.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(noisy.shape)}")
        if self.in_channels is not None and noisy.shape[1] != self.in_channels:
            raise ValueError(f"the UNet takes {self.in_channels} channels, got images with {noisy.shape[1]}")
        size = tuple(noisy.shape[-2:])
        x = noisy.float()
        resized = self.sample_size is not None and size != self.sample_size
        if resized:
            if self.resize is None:
                raise ValueError(f"images are {size[0]}x{size[1]} but the UNet's sample_size is "
                                 f"{self.sample_size}; pass resize='bilinear' (or another mode) to resize")
            x = F.interpolate(x, size=self.sample_size, mode=self.resize,
                              **({} if self.resize in ("nearest", "area") else {"align_corners": False}))
        t_star = self.timestep(sigma)
        x_t = self.alphas_cumprod[t_star].to(x.device).sqrt() * (2.0 * x - 1.0)
        x0 = self._reverse_chain(x_t, t_star)
        if resized:
            x0 = F.interpolate(x0, size=size, mode=self.resize,
                               **({} if self.resize in ("nearest", "area") else {"align_corners": False}))
        return ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)

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

    # -- persistence --------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = torch.float16) -> Path:
        """Write the pipeline layout: ``unet/`` (safetensors, fp16 by default) and ``scheduler/``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        original = next(self.unet.parameters()).dtype
        if dtype is not None:
            self.unet.to(dtype)
        try:
            self.unet.save_pretrained(directory / "unet", safe_serialization=True)
        finally:
            self.unet.to(original)
        self.scheduler.save_pretrained(directory / "scheduler")
        index = {"_class_name": "DDPMPipeline", "unet": ["diffusers", type(self.unet).__name__],
                 "scheduler": ["diffusers", type(self.scheduler).__name__]}
        (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, dir_or_id: str | os.PathLike, **kwargs: Any) -> "DiffusionDenoiser":
        """Load a local folder or hub id: the pipeline layout (``unet/`` + ``scheduler/``) or a bare UNet folder.

        A bare UNet folder without a scheduler config gets diffusers' default DDPM schedule (1000 linear
        steps, beta 1e-4..0.02), with a warning.
        """
        unet, scheduler = load_unet_and_scheduler(dir_or_id)
        return cls(unet, scheduler, **kwargs)


def _scheduler_from_config(config: dict[str, Any]) -> Any:
    import diffusers

    name = config.get("_class_name", "DDPMScheduler")
    scheduler_cls = getattr(diffusers, name, None)
    if scheduler_cls is None or not hasattr(scheduler_cls, "from_config"):
        raise ValueError(f"unknown diffusers scheduler class {name!r} in the scheduler config")
    return scheduler_cls.from_config(config)


def load_unet_and_scheduler(dir_or_id: str | os.PathLike) -> tuple[nn.Module, Any]:
    """The UNet2DModel (fp32) and scheduler of a local folder or hub id, in either layout."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(dir_or_id).expanduser()
    if path.is_dir():
        unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
        if not (unet_dir / "config.json").is_file():
            raise ValueError(f"{str(path)!r} holds neither unet/config.json nor config.json of a UNet2DModel")
        try:
            unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=torch.float32)
        except Exception as exc:  # a torn weights file, a damaged config: one line, naming the folder
            raise ValueError(f"the UNet in {str(unet_dir)!r} cannot be loaded (damaged or truncated files?): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        candidates = [path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"]
        sched_file = next((c for c in candidates if c.is_file()), None)
        config = json.loads(sched_file.read_text()) if sched_file else None
    elif path.exists():
        raise ValueError(f"{str(dir_or_id)!r} is a file; expected a folder or a hub id of a diffusers UNet")
    else:  # a Hugging Face Hub id, e.g. google/ddpm-cifar10-32 (pipeline layout) or a bare UNet repo
        hub_id = str(dir_or_id)
        try:
            try:
                unet = UNet2DModel.from_pretrained(hub_id, subfolder="unet", torch_dtype=torch.float32)
                sched_sub: str | None = "scheduler"
            except (OSError, EnvironmentError):
                unet = UNet2DModel.from_pretrained(hub_id, torch_dtype=torch.float32)
                sched_sub = None
        except Exception as exc:
            raise ValueError(f"{hub_id!r} is neither a local folder nor a loadable hub id of a diffusers UNet "
                             f"({type(exc).__name__}: {exc})") from exc
        try:
            config = dict(DDPMScheduler.load_config(hub_id, subfolder=sched_sub))
        except Exception:
            config = None
    if config is None:
        log.warning("no scheduler config beside %s; using diffusers' default DDPM schedule", dir_or_id)
        scheduler = DDPMScheduler()
    else:
        scheduler = _scheduler_from_config(config)
    return unet.float().eval(), scheduler


@register_denoiser("ddpm", summary="ddpm:<folder or hub id>: one-shot diffusion denoiser (Carlini et al. 2023)")
def create_ddpm(identifier: str | None = None, **kwargs: Any) -> DiffusionDenoiser:
    """A diffusers UNet + scheduler as a one-shot denoiser; keyword options go to `DiffusionDenoiser`."""
    if identifier is None:
        raise ValueError("denoiser 'ddpm' needs a folder or hub id, e.g. 'ddpm:google/ddpm-cifar10-32'")
    return DiffusionDenoiser.from_pretrained(identifier, **kwargs)
