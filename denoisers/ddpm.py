"""The ``ddpm`` denoiser: a diffusers ``UNet2DModel`` + scheduler as a one-shot diffusion denoiser.

The denoising rule (t* from sigma, x_t, x0, clipping, the chain) is `denoisers.diffusion`'s; this
file only says how a diffusers model is loaded and called (integer timesteps, ``.sample``).

Specs: ``ddpm:<local folder>`` or ``ddpm:<hub id>`` (e.g. ``ddpm:google/ddpm-cifar10-32``) holding either
a ``UNet2DModel`` folder or the pipeline layout with ``unet/`` and ``scheduler/`` subfolders.

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
from typing import Any

import torch
from torch import nn

from certify.libraries import hub_problems, is_hub_id, reachable
from certify.rules import PRECISIONS

from . import register_denoiser
from .diffusion import PREDICTION_TYPES, RULE_OPTIONS, DiffusionDenoiser, TimestepRule, VPDenoiser, noise_to_signal, timestep_for_sigma

log = logging.getLogger(__name__)



def _alphas_cumprod_of(scheduler: Any) -> torch.Tensor:
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(
            f"scheduler {type(scheduler).__name__} defines no alphas_cumprod; expected a DDPM-style diffusers "
            "scheduler (DDPMScheduler, DDIMScheduler, ...)"
        )
    return torch.as_tensor(abar, dtype=torch.float64).detach().cpu()


def unet_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A UNet dtype option (``fp16``, ``bf16``, ``fp32`` or a torch dtype) as a torch dtype; None keeps the weights'.

    >>> unet_dtype("bf16")
    torch.bfloat16
    """
    if isinstance(dtype, str):
        if dtype not in PRECISIONS:
            raise ValueError(f"dtype must be one of {', '.join(PRECISIONS)}, got {dtype!r}")
        return PRECISIONS[dtype]
    return dtype


def run_unet(unet: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, dtype: torch.dtype | None,
             **conditioning: Any) -> torch.Tensor:
    """A diffusers UNet's output tensor for ``x`` cast to ``dtype`` (None: the UNet's own)."""
    out = unet(x.to(dtype or next(unet.parameters()).dtype), timesteps, **conditioning)
    return out.sample if hasattr(out, "sample") else out[0] if isinstance(out, (tuple, list)) else out


class DDPMDenoiser(VPDenoiser):
    """A diffusers UNet and scheduler under the one diffusion rule (see `VPDenoiser` for the options).

    Args:
        unet: a diffusers ``UNet2DModel`` (or any module ``unet(x, t).sample`` / ``unet(x, t)[0]``).
        scheduler: a diffusers scheduler with ``alphas_cumprod`` (and ``config.prediction_type``).
        dtype: run the UNet in this dtype (``fp16`` / ``bf16`` on a GPU); noise and the x_t / x0
            arithmetic stay fp32.
        prediction_type: overrides ``scheduler.config.prediction_type``.
        **options: `VPDenoiser`'s ``timestep_rule``, ``num_steps``, ``eta``, ``resize``.

    >>> from diffusers import DDPMScheduler, UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8),
    ...                    down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
    ...                    layers_per_block=1, norm_num_groups=4)
    >>> den = DDPMDenoiser(unet, DDPMScheduler())
    >>> den.timestep(0.5), round(den.implied_sigma(0.5), 3)
    (259, 0.502)
    >>> den(torch.rand(2, 1, 8, 8), 0.5).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(self, unet: nn.Module, scheduler: Any, dtype: torch.dtype | str | None = None,
                 prediction_type: str | None = None, **options: Any) -> None:
        config = getattr(scheduler, "config", {})
        ucfg = getattr(unet, "config", {})
        in_channels = ucfg.get("in_channels")
        out_channels = ucfg.get("out_channels", in_channels)
        # A learned variance doubles the output channels; the first half is the prediction.
        learned = (in_channels is not None and out_channels == 2 * in_channels) or \
            (config.get("variance_type") or "") in ("learned", "learned_range")
        super().__init__(unet, _alphas_cumprod_of(scheduler),
                         prediction_type=prediction_type or config.get("prediction_type") or "epsilon",
                         learned_variance=learned, sample_size=ucfg.get("sample_size"), in_channels=in_channels,
                         name=type(unet).__name__, **options)
        if self.timestep_rule == "exact" and ucfg.get("time_embedding_type") == "learned":
            raise ValueError("timestep_rule='exact' calls the UNet at fractional timesteps, but its time embedding "
                             "is a learned table of integer timesteps; use timestep_rule='first'")
        self.scheduler = scheduler
        self.dtype = unet_dtype(dtype)
        if self.dtype is not None:
            self.model.to(self.dtype)

    @property
    def unet(self) -> nn.Module:
        return self.model

    def call_model(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return run_unet(self.model, x_t, timesteps, self.dtype)

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
            if dtype is not None:
                self.unet.to(original)
        self.scheduler.save_pretrained(directory / "scheduler")
        index = {"_class_name": "DDPMPipeline", "unet": ["diffusers", type(self.unet).__name__],
                 "scheduler": ["diffusers", type(self.scheduler).__name__]}
        (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, dir_or_id: str | os.PathLike, **kwargs: Any) -> "DDPMDenoiser":
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


def load_unet_and_scheduler(dir_or_id: str | os.PathLike, default_scheduler: type | None = None) -> tuple[nn.Module, Any]:
    """The UNet2DModel (fp32) and scheduler of a local folder or hub id, in either layout; without a scheduler
    config, ``default_scheduler()`` (diffusers' DDPM schedule unless given), with a warning."""
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
        reachable()  # one probe: offline, diffusers reads the cache at once instead of retrying
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
        default_scheduler = default_scheduler or DDPMScheduler
        log.warning("no scheduler config beside %s; using diffusers' default %s", dir_or_id, default_scheduler.__name__)
        scheduler = default_scheduler()
    else:
        scheduler = _scheduler_from_config(config)
    return unet.float().eval(), scheduler


def check_ddpm(identifier: str | None = None, **_: Any) -> list[str]:
    """Preflight: a local folder of either layout, or a hub repo that is cached or reachable."""
    if identifier is None:
        return ["denoiser 'ddpm' needs a folder or hub id, e.g. 'ddpm:google/ddpm-cifar10-32'"]
    path = Path(identifier).expanduser()
    if path.is_dir():
        return [] if (path / "unet" / "config.json").is_file() or (path / "config.json").is_file() else \
            ["the folder holds neither unet/config.json nor config.json of a UNet2DModel"]
    if path.exists() or not is_hub_id(identifier):
        return ["no such folder (expected a diffusers UNet folder, or a hub id OWNER/NAME)"]
    return hub_problems(identifier, ("unet/config.json", "config.json"), "the diffusion model",
                        "give a local folder, or set HF_HOME to a cache that has it")


@register_denoiser("ddpm", summary="ddpm:<folder or hub id>: one-shot diffusion denoiser (Carlini et al. 2023)",
                   check=check_ddpm)
def create_ddpm(identifier: str | None = None, **kwargs: Any) -> DDPMDenoiser:
    """A diffusers UNet + scheduler as a one-shot denoiser; keyword options go to `DDPMDenoiser`."""
    if identifier is None:
        raise ValueError("denoiser 'ddpm' needs a folder or hub id, e.g. 'ddpm:google/ddpm-cifar10-32'")
    return DDPMDenoiser.from_pretrained(identifier, **kwargs)


create_ddpm.options = ("dtype", "prediction_type", *RULE_OPTIONS)  # what it hands on: named, checked before loading


__all__ = ["DDPMDenoiser", "DiffusionDenoiser", "PREDICTION_TYPES", "TimestepRule", "VPDenoiser", "load_unet_and_scheduler",
           "noise_to_signal", "timestep_for_sigma"]
