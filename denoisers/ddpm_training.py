"""Train a small DDPM (diffusers' UNet2DModel + DDPMScheduler) for diffusion denoised smoothing.

The standard epsilon-prediction objective of Ho et al. (2020): ``|| eps - unet(add_noise(x0, eps, t), t) ||^2``
with ``x0`` in [-1, 1]. For smoothing only the timesteps around t*(sigma) are ever used, so the config
may focus training there (``timestep_sigma_range: [lo, hi]``: with probability ``focus_probability`` t
is drawn uniformly between t*(lo) and t*(hi), otherwise uniformly in ``[0, t*(hi)]`` so that a
multi-step reverse chain still sees all the lower timesteps). Without that key t is uniform over the
whole schedule, as in the paper.

Built on the trainer kit (:mod:`certify.training`): the run folder ``output_dir`` holds the pipeline
layout (``unet/`` + ``scheduler/``, loadable as ``ddpm:DIR``) after every epoch, with the EMA weights in
the training state (``resume=True`` continues from it); ``export_dir`` finally gets the EMA weights in
fp16, ``bundle.json`` and the config.

>>> from denoisers.ddpm_training import training_timestep_range
>>> training_timestep_range({"num_train_timesteps": 1000}, [0.25, 1.0])
(145, 396)
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from certify.training import (COMMON_DEFAULTS, export_bundle, load_training_config, start_state,
                              make_accelerator, make_loaders, make_optimizer, run_epochs)

from .ddpm import DDPMDenoiser, timestep_for_sigma

log = logging.getLogger(__name__)

DDPM_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "family": "ddpm",
    "optimizer": "adamw",
    "unet": None,                   # UNet2DModel keyword arguments (sample_size = the images' size)
    "scheduler": {},                # DDPMScheduler keyword arguments (diffusers' defaults otherwise)
    "ema_decay": 0.999,
    "timestep_sigma_range": None,   # [lo, hi] pixel sigmas: focus the timesteps on t*(lo) .. t*(hi)
    "focus_probability": 1.0,
}


def training_timestep_range(scheduler_config: Mapping[str, Any], sigma_range: list[float] | None) -> tuple[int, int]:
    """Timesteps t*(lo), t*(hi) for a pixel-sigma range (first-t rule), or the whole schedule."""
    from diffusers import DDPMScheduler

    from certify.rules import check_sigma

    scheduler = DDPMScheduler(**scheduler_config)
    if not sigma_range:
        return 0, scheduler.config.num_train_timesteps - 1
    if not isinstance(sigma_range, (list, tuple)) or len(sigma_range) != 2:
        raise ValueError(f"timestep_sigma_range must be [lo, hi], got {sigma_range!r}")
    lo, hi = (check_sigma(s) for s in sigma_range)
    if not lo <= hi:
        raise ValueError(f"timestep_sigma_range must be [lo, hi] with 0 < lo <= hi, got {sigma_range!r}")
    return (timestep_for_sigma(scheduler.alphas_cumprod, lo), timestep_for_sigma(scheduler.alphas_cumprod, hi))


def sample_timesteps(n: int, t_lo: int, t_hi: int, focus: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` timesteps: U[t_lo, t_hi] with probability ``focus``, else U[0, t_hi] (this rank's RNG).

    >>> t = sample_timesteps(1000, 70, 396, 1.0)
    >>> int(t.min()) >= 70 and int(t.max()) <= 396
    True
    """
    focused = torch.randint(t_lo, t_hi + 1, (n,))
    broad = torch.randint(0, t_hi + 1, (n,))
    return torch.where(torch.rand(n) < focus, focused, broad).to(device)


def _build(cfg: Mapping[str, Any], path: Path):
    from diffusers import DDPMScheduler, UNet2DModel

    if not isinstance(cfg["unet"], Mapping):
        raise ValueError(f"{path}: 'unet' is required: UNet2DModel's keyword arguments (sample_size, block_out_channels ...)")
    if not isinstance(cfg["scheduler"], Mapping):
        raise ValueError(f"{path}: 'scheduler' must be DDPMScheduler's keyword arguments, got {cfg['scheduler']!r}")
    scheduler = DDPMScheduler(**cfg["scheduler"])
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"{path}: this recipe trains epsilon prediction, got prediction_type="
                         f"{scheduler.config.prediction_type!r}")
    return UNet2DModel(**cfg["unet"]), scheduler


def train_ddpm_from_config(path: str, resume: bool = False, overrides: Mapping[str, Any] | None = None) -> Path:
    """Train the DDPM a YAML config describes; returns the run folder (``ddpm:`` loads it).

    ``resume=True`` continues from the run folder's last finished epoch (weights, EMA, optimizer, steps).
    """
    from diffusers import UNet2DModel
    from diffusers.training_utils import EMAModel

    config_path = Path(path)
    cfg = load_training_config(config_path, DDPM_DEFAULTS, overrides)
    focus = float(cfg["focus_probability"])
    if not 0.0 <= focus <= 1.0:
        raise ValueError(f"{path}: focus_probability must be in [0, 1], got {cfg['focus_probability']!r}")
    unet, scheduler = _build(cfg, config_path)
    t_lo, t_hi = training_timestep_range(cfg["scheduler"], cfg["timestep_sigma_range"])
    accelerator = make_accelerator(cfg)
    out = Path(cfg["output_dir"])
    state = start_state(out, resume)
    if state is not None:
        unet = UNet2DModel.from_pretrained(out / "unet", torch_dtype=torch.float32)
    log.info("UNet2DModel with %d parameters; timesteps [%d, %d] (focus %.2f) of %d",
             sum(p.numel() for p in unet.parameters()), t_lo, t_hi, focus, scheduler.config.num_train_timesteps)

    train_loader, _ = make_loaders({**cfg, "eval_dataset": None})
    size = tuple(train_loader.dataset[0][0].shape[-2:])
    if size != (unet.config.sample_size,) * 2:
        raise ValueError(f"{path}: dataset images are {size} but unet.sample_size is {unet.config.sample_size}; "
                         f"set image_size or the UNet's sample_size")
    ema = EMAModel(unet.parameters(), decay=float(cfg["ema_decay"]))
    if state is not None:
        ema.shadow_params = [p.clone() for p in state["extra"]["ema"]]
        ema.optimization_step = int(state["extra"]["ema_step"])
    unet, train_loader = accelerator.prepare(unet, train_loader)
    ema.to(accelerator.device)
    optimizer, schedule, start_epoch, steps = make_optimizer(unet.parameters(), cfg, len(train_loader), state)
    optimizer = accelerator.prepare(optimizer)

    def loss_fn(images, labels):
        x0 = images * 2.0 - 1.0  # [-1, 1] as the DDPM expects
        eps = torch.randn_like(x0)
        t = sample_timesteps(x0.shape[0], t_lo, t_hi, focus, x0.device)
        with accelerator.autocast():
            return F.mse_loss(unet(scheduler.add_noise(x0, eps, t), t).sample.float(), eps)

    def ema_state():
        return {"ema": [p.detach().cpu() for p in ema.shadow_params], "ema_step": int(ema.optimization_step)}

    run_epochs(accelerator, unet, optimizer, schedule, train_loader, cfg, out, start_epoch, steps, loss_fn,
               lambda unwrapped: {}, desc="ddpm ",
               after_step=lambda: ema.step(accelerator.unwrap_model(unet).parameters()),
               save=lambda unwrapped, folder: DDPMDenoiser(unwrapped, scheduler).save_pretrained(folder, dtype=None),
               extra_state=ema_state)
    if accelerator.is_main_process and cfg["export_dir"]:
        final = copy.deepcopy(accelerator.unwrap_model(unet)).cpu().eval()
        ema.copy_to(final.parameters())
        log.info("wrote %s", export_bundle(DDPMDenoiser(final, scheduler), cfg, config_path, cfg["family"]))
    accelerator.wait_for_everyone()
    return out
