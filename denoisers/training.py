"""Train a denoiser for one sigma from a YAML config, with Accelerate (CPU, one GPU or many).

``accelerate launch recipes/train_denoiser.py --config recipes/configs/NAME.yaml`` and
``dsmooth train-denoiser --config NAME.yaml`` both call :func:`train_from_config`. Each epoch logs
the training loss, the PSNR of the denoised held-out images (and of the noisy ones, for scale) and
the accuracy of the classifier under noise with and without the denoiser; the run folder is a
loadable checkpoint after every epoch, and ``resume=True`` continues a killed run.

Config keys (defaults in :data:`DENOISER_DEFAULTS`, shared ones in :mod:`certify.training`):
``denoiser`` / ``denoiser_kwargs`` build a fresh denoiser, or ``init_from`` (a denoiser spec or
folder) starts from a trained one (required by ``stab+mse``); ``objective``; ``sigma``;
``classifiers`` (entries the objective trains through: one for white-box, several surrogates rotated
per minibatch for black-box); ``eval_classifier`` (the one the accuracy is measured with; the
target in black-box runs). The paper's defaults: Adam lr 1e-3, weight decay 1e-4, batch 256,
90 epochs, StepLR(30, 0.1).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certify.checkpoint import load_config
from certify.registry import entry_spec
from certify.rules import check_sigma
from certify.training import (COMMON_DEFAULTS, export_bundle, freeze, load_training_config, start_state,
                              make_accelerator, make_loaders, make_optimizer, run_epochs)
from classifiers import CLASSIFIERS

from . import create_denoiser
from .objectives import ClassifierRotation, denoiser_loss, get_objective
from .trained import TrainedDenoiser

log = logging.getLogger(__name__)

build_classifier = CLASSIFIERS.create_entry  # a config entry (spec, or {spec, kwargs}) -> a classifier

DENOISER_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "epochs": 90, "batch_size": 256, "lr": 1e-3, "weight_decay": 1e-4, "lr_step": 30, "lr_gamma": 0.1,
    "denoiser": "dncnn",
    "denoiser_kwargs": {},
    "init_from": None,
    "objective": "mse",
    "sigma": None,
    "classifiers": [],
    "eval_classifier": None,
    "eval_seed": 1234,
}


def psnr(estimate: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1] (peak 1).

    >>> x = torch.zeros(1, 1, 4, 4)
    >>> round(float(psnr(x + 0.1, x)[0]), 3)
    20.0
    """
    mse = (estimate - clean).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def evaluate_denoiser(denoiser: nn.Module, classifier: nn.Module | None, loader, sigma: float,
                      device: torch.device | str = "cpu", seed: int = 1234) -> dict[str, float]:
    """Held-out metrics at ``sigma`` under fixed-seed noise (the same noise every epoch).

    ``psnr_noisy`` / ``psnr_denoised``: mean per-image PSNR of x + d and of D(x + d) against x;
    ``acc_clean``, ``acc_noisy``, ``acc_denoised``: accuracy of the classifier on x, x + d, D(x + d).

    >>> from denoisers.dncnn import DnCNN
    >>> data = [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    >>> m = evaluate_denoiser(DnCNN(1, depth=3, features=4), None, data, sigma=0.5)
    >>> m["psnr_denoised"] >= m["psnr_noisy"]  # a fresh DnCNN only clamps, which can only help
    True
    """
    was_training = denoiser.training
    denoiser.eval()
    gen = torch.Generator().manual_seed(seed)
    sums = {k: 0.0 for k in ("psnr_noisy", "psnr_denoised", "acc_clean", "acc_noisy", "acc_denoised")}
    total = 0
    for x, y in loader:
        noisy = x + sigma * torch.randn(x.shape, generator=gen)
        x, y, noisy = x.to(device), y.to(device), noisy.to(device)
        denoised = denoiser(noisy, sigma)
        sums["psnr_noisy"] += float(psnr(noisy, x).sum())
        sums["psnr_denoised"] += float(psnr(denoised, x).sum())
        if classifier is not None:
            for key, images in (("acc_clean", x), ("acc_noisy", noisy), ("acc_denoised", denoised)):
                sums[key] += float((classifier(images).argmax(1) == y).sum())
        total += len(y)
    denoiser.train(was_training)
    out = {k: v / max(total, 1) for k, v in sums.items()}
    if classifier is None:
        out.update(acc_clean=math.nan, acc_noisy=math.nan, acc_denoised=math.nan)
    return out


def _build_denoiser(cfg: dict[str, Any], out: Path, resuming: bool) -> TrainedDenoiser:
    if resuming:
        return TrainedDenoiser.from_pretrained(out)
    if cfg["init_from"]:
        if cfg["denoiser_kwargs"]:
            raise ValueError("init_from and denoiser_kwargs exclude each other: the checkpoint fixes the architecture")
        init = str(cfg["init_from"])
        if Path(init).is_dir():  # a checkpoint folder: its architecture names the registry family
            init = f"{load_config(init)[1].get('architecture')}:{init}"
        model = create_denoiser(init)
        if model.sigma is not None and abs(model.sigma - cfg["sigma"]) > 1e-9:
            log.warning("init_from %s was trained for sigma=%g, fine-tuning at sigma=%g",
                        cfg["init_from"], model.sigma, cfg["sigma"])
        return model
    return create_denoiser(cfg["denoiser"], **dict(cfg["denoiser_kwargs"] or {}))


def train_from_config(path: str, resume: bool = False, overrides: dict[str, Any] | None = None) -> Path:
    """Train the denoiser a YAML config describes; returns its run folder (a loadable checkpoint).

    Example (one tiny epoch on sklearn's digits):

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "c.yaml").write_text(f"denoiser_kwargs: {{in_channels: 1, depth: 3, features: 4}}\\n"
    ...     f"sigma: 0.25\\nepochs: 1\\nbatch_size: 64\\ntrain_dataset: digits:train\\neval_dataset: digits:test\\n"
    ...     f"cpu: true\\noutput_dir: {d / 'run'}\\n")
    >>> create_denoiser(f"dncnn:{train_from_config(str(d / 'c.yaml'))}").sigma
    0.25
    """
    cfg = load_training_config(path, DENOISER_DEFAULTS, overrides)
    objective = get_objective(cfg["objective"])
    try:
        sigma = cfg["sigma"] = check_sigma(cfg["sigma"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc} (the noise level the denoiser is trained for)") from None
    entries = list(cfg["classifiers"] or [])
    if objective.needs_classifier and not entries:
        raise ValueError(f"{path}: objective {objective.name!r} needs at least one entry in 'classifiers'")
    if objective.needs_init and not cfg["init_from"]:
        raise ValueError(f"{path}: objective {objective.name!r} fine-tunes a trained denoiser; set 'init_from' "
                         f"(e.g. the MSE checkpoint)")

    accelerator = make_accelerator(cfg)
    out = Path(cfg["output_dir"])
    state = start_state(out, resume)
    denoiser = _build_denoiser(cfg, out, resuming=state is not None)
    denoiser.provenance.update(
        sigma=sigma, objective=objective.name, dataset=cfg["train_dataset"],
        classifiers=[entry_spec(e) for e in entries] or None,
        training={"config": Path(path).name, "init_from": cfg["init_from"], "epochs": cfg["epochs"]})
    denoiser.train()

    device = accelerator.device
    classifiers = [freeze(build_classifier(e)).to(device) for e in entries]
    rotation = ClassifierRotation(classifiers)
    if cfg["eval_classifier"] is not None:
        eval_classifier = freeze(build_classifier(cfg["eval_classifier"])).to(device)
    else:
        eval_classifier = classifiers[0] if classifiers else None

    train_loader, eval_loader = make_loaders(cfg)
    denoiser, train_loader = accelerator.prepare(denoiser, train_loader)
    optimizer, schedule, start_epoch, steps = make_optimizer(denoiser.parameters(), cfg, len(train_loader), state)
    optimizer = accelerator.prepare(optimizer)

    def evaluate(unwrapped):
        if eval_loader is None:
            return {}
        return evaluate_denoiser(unwrapped, eval_classifier, eval_loader, sigma, device, cfg["eval_seed"])

    run_epochs(accelerator, denoiser, optimizer, schedule, train_loader, cfg, out, start_epoch, steps,
               lambda clean, labels: denoiser_loss(objective, denoiser, clean, labels, sigma, rotation.next()),
               evaluate, desc=f"{objective.name} sigma={sigma:g} ")
    main = accelerator.is_main_process
    if main and cfg["export_dir"]:
        family = cfg["family"] or str(cfg["init_from"] or cfg["denoiser"]).split(":")[0].split(".")[0]
        export_bundle(accelerator.unwrap_model(denoiser), cfg, path, family)
    accelerator.wait_for_everyone()
    return out
