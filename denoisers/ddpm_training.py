"""Train a small DDPM (diffusers' UNet2DModel + DDPMScheduler) for diffusion denoised smoothing.

The standard epsilon-prediction objective of Ho et al. (2020): ``|| eps - unet(sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps, t) ||^2``. For smoothing only the timesteps around t*(sigma) are ever used, so the
config may focus training there (``training.timestep_sigma_range``: with probability
``training.focus_probability`` t is drawn uniformly between t*(lo) and t*(hi), otherwise uniformly in
``[0, t*(hi)]`` so that a multi-step reverse chain still sees all the lower timesteps). Without that
key t is uniform over the whole schedule, as in the paper.

Runs unchanged on a CPU, one GPU or many through Accelerate; saves the full training state after every
epoch under ``work_dir/checkpoint`` (``resume=True`` continues from it) and finally writes the EMA
weights in the diffusers pipeline layout (``unet/`` in fp16 safetensors, ``scheduler/``) to
``output_dir``, with ``bundle.json`` and a copy of the config.

>>> from denoisers.ddpm_training import training_timestep_range
>>> training_timestep_range({"num_train_timesteps": 1000}, [0.25, 1.0])
(145, 396)
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .ddpm import timestep_for_sigma

log = logging.getLogger(__name__)

EMA_NAME = "ema.safetensors"
REQUIRED = ("output_dir", "work_dir", "dataset", "unet", "scheduler", "training")


def load_training_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read and check a DDPM training YAML (see ``recipes/configs/ddpm_mnist5k.yaml``).

    ``overrides`` (command line; None = not given): ``output_dir``, ``work_dir``, ``epochs``.
    """
    from classifiers.training import check_not_in_package

    from certify.config import read_config

    path = Path(path)
    cfg = read_config(path, what="training config")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unsupported = sorted(set(given) - {"output_dir", "work_dir", "epochs"})
    if unsupported:
        raise ValueError(f"DDPM training takes --output-dir (the exported pipeline) and --epochs, not "
                         f"{', '.join('--' + k.replace('_', '-') for k in unsupported)}")
    cfg.update({k: v for k, v in given.items() if k != "epochs"})
    if "epochs" in given and isinstance(cfg.get("training"), dict):
        cfg["training"]["epochs"] = given["epochs"]
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing}; expected {list(REQUIRED)}")
    for key in ("output_dir", "work_dir"):
        check_not_in_package(cfg[key], key, explicit=key in given)
    return cfg


def training_timestep_range(scheduler_config: dict[str, Any], sigma_range: list[float] | None) -> tuple[int, int]:
    """Timesteps t*(lo), t*(hi) for a pixel-sigma range (first-t rule), or the whole schedule."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**scheduler_config)
    if not sigma_range:
        return 0, scheduler.config.num_train_timesteps - 1
    from certify.smoothing import check_sigma

    lo, hi = (check_sigma(s) for s in sigma_range)
    if not lo <= hi:
        raise ValueError(f"timestep_sigma_range must be [lo, hi] with 0 < lo <= hi, got {sigma_range!r}")
    return (timestep_for_sigma(scheduler.alphas_cumprod, lo), timestep_for_sigma(scheduler.alphas_cumprod, hi))


def _sample_timesteps(n: int, t_lo: int, t_hi: int, focus: float, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
    focused = torch.randint(t_lo, t_hi + 1, (n,), generator=generator)
    broad = torch.randint(0, t_hi + 1, (n,), generator=generator)
    pick = torch.rand(n, generator=generator) < focus
    return torch.where(pick, focused, broad).to(device)


def _dataset_tensor(spec: str) -> torch.Tensor:
    from certify.data import create_dataset

    data = create_dataset(spec)
    return torch.stack([data[i][0] for i in range(len(data))]).float()


def export_pipeline(unet: torch.nn.Module, scheduler: Any, cfg: dict[str, Any], config_path: Path,
                    summary: str) -> Path:
    """Write ``output_dir`` as a shipped pretrained denoiser: pipeline layout + bundle.json + the recipe."""
    from .ddpm import DDPMDenoiser

    out = Path(cfg["output_dir"])
    DDPMDenoiser(unet, scheduler).save_pretrained(out, dtype=torch.float16)
    (out / "bundle.json").write_text(json.dumps({"family": "ddpm", "summary": summary}, indent=2) + "\n")
    if config_path.resolve() != (out / config_path.name).resolve():
        shutil.copyfile(config_path, out / config_path.name)
    return out


def train_ddpm_from_config(path: str, resume: bool = False, overrides: dict[str, Any] | None = None) -> Path:
    """Train the DDPM a YAML config describes; returns the exported pipeline folder.

    ``resume=True`` continues from ``work_dir/checkpoint`` (model, EMA, optimizer, RNG states, epoch).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from classifiers.training import check_ranks_agree
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    config_path = Path(path)
    cfg = load_training_config(config_path, overrides)
    tcfg = dict(cfg["training"])
    if tcfg.get("num_threads"):
        torch.set_num_threads(int(tcfg["num_threads"]))
    # Without CUDA, processes started by torchrun (`accelerate launch --multi_gpu`) must be told to
    # form a CPU (gloo) group, or each would train alone.
    from certify.launch import warn_if_launch_ran_one_process

    accelerator = Accelerator(cpu=bool(tcfg.get("cpu")) or not torch.cuda.is_available(),
                              mixed_precision=tcfg.get("mixed_precision"))  # None: Accelerate's own setting
    warn_if_launch_ran_one_process(accelerator.num_processes)
    set_seed(int(cfg.get("seed", 0)))

    unet = UNet2DModel(**cfg["unet"])
    scheduler = DDPMScheduler(**cfg["scheduler"])
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"this recipe trains epsilon prediction, got prediction_type={scheduler.config.prediction_type!r}")
    t_lo, t_hi = training_timestep_range(cfg["scheduler"], tcfg.get("timestep_sigma_range"))
    focus = float(tcfg.get("focus_probability", 1.0))
    log.info("UNet2DModel with %d parameters; timesteps [%d, %d] (focus %.2f) of %d",
             sum(p.numel() for p in unet.parameters()), t_lo, t_hi, focus, scheduler.config.num_train_timesteps)

    images = _dataset_tensor(cfg["dataset"]) * 2.0 - 1.0  # [-1, 1] as the DDPM expects
    if tuple(images.shape[-2:]) != (unet.config.sample_size,) * 2:
        raise ValueError(f"dataset images are {tuple(images.shape[-2:])} but unet.sample_size is {unet.config.sample_size}")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=int(tcfg["batch_size"]),
                                         shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=float(tcfg["learning_rate"]),
                                  weight_decay=float(tcfg.get("weight_decay", 0.0)))
    warmup = int(tcfg.get("warmup_steps", 0))
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup)))
    ema = EMAModel(unet.parameters(), decay=float(tcfg.get("ema_decay", 0.999)))
    unet, optimizer, loader, lr_schedule = accelerator.prepare(unet, optimizer, loader, lr_schedule)
    ema.to(accelerator.device)

    work = Path(cfg["work_dir"])
    ckpt = work / "checkpoint"
    state_file = work / "trainer_state.json"
    start_epoch = 0
    if resume:
        if not state_file.is_file():
            raise ValueError(f"resume=True but {state_file} does not exist; start without --resume")
        accelerator.load_state(str(ckpt))
        shadow = load_file(str(ckpt / EMA_NAME))
        ema.shadow_params = [shadow[str(i)].to(accelerator.device) for i in range(len(ema.shadow_params))]
        ema.optimization_step = int(json.loads(state_file.read_text())["ema_step"])
        start_epoch = json.loads(state_file.read_text())["epoch"]
        log.info("resumed from %s after epoch %d", ckpt, start_epoch)

    abar = scheduler.alphas_cumprod.to(accelerator.device)
    # each process draws its own noise and timesteps (rank 0 keeps the single-process stream)
    gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)) * 1000 + start_epoch + 1_000_003 * accelerator.process_index)
    epochs = int(tcfg["epochs"])
    budget = float(tcfg.get("max_minutes", math.inf)) * 60.0
    started = time.time()
    for epoch in range(start_epoch, epochs):
        unet.train()
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not accelerator.is_local_main_process,
                   mininterval=10)
        for (x0,) in bar:
            eps = torch.randn(x0.shape, generator=gen).to(x0.device)
            t = _sample_timesteps(x0.shape[0], t_lo, t_hi, focus, gen, x0.device)
            a = abar[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            with accelerator.autocast():
                loss = torch.nn.functional.mse_loss(unet(x_t, t).sample.float(), eps)
            if not math.isfinite(float(loss.detach())):
                raise ValueError(f"the training loss became non-finite at epoch {epoch + 1}; stopped without "
                                 f"saving this epoch (lower learning_rate, check the data)")
            accelerator.backward(loss)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad()
            ema.step(accelerator.unwrap_model(unet).parameters())
            total += loss.item() * x0.shape[0]
            count += x0.shape[0]
            bar.set_postfix(loss=f"{total / count:.4f}")
        accelerator.wait_for_everyone()
        check_ranks_agree(accelerator, unet)
        accelerator.save_state(str(ckpt))
        if accelerator.is_main_process:  # the EMA as safetensors too: nothing in a checkpoint is a pickle of ours
            save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)}, str(ckpt / EMA_NAME))
            state_file.write_text(json.dumps({"epoch": epoch + 1, "ema_step": ema.optimization_step,
                                              "loss": total / max(count, 1)}) + "\n")
        log.info("epoch %d/%d: loss %.5f (%.1f min)", epoch + 1, epochs, total / max(count, 1),
                 (time.time() - started) / 60)
        if time.time() - started > budget:
            log.warning("stopping after epoch %d: training.max_minutes=%s reached", epoch + 1, tcfg["max_minutes"])
            break

    final = accelerator.unwrap_model(unet)
    ema.copy_to(final.parameters())
    out = Path(cfg["output_dir"])
    if accelerator.is_main_process:
        out = export_pipeline(final.cpu().eval(), scheduler, cfg, config_path, cfg.get("summary", "DDPM denoiser"))
        log.info("wrote %s", out)
    return out
