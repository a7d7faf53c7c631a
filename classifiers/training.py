"""The standard classifier trainer (small-cnn and any registered classifier with ``save_pretrained``).

:func:`train_classifier_from_config` runs unchanged on a CPU, one GPU or many
(``accelerate launch recipes/train_classifier.py --config FILE.yaml``) on the shared trainer kit
(:mod:`certify.training`): progress bars on the main process, a checkpoint after every epoch, and
``resume=True`` continuing the epoch counter and the optimizer state of a killed run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from certify.registry import entry_spec
from certify.training import (COMMON_DEFAULTS, export_bundle, load_training_config, start_state,
                              make_accelerator, make_loaders, make_optimizer, run_epochs)

from . import CLASSIFIERS


CLASSIFIER_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "classifier": None,         # a classifier entry, built fresh: small-cnn or {spec: small-cnn, kwargs: {...}}
    "noise_sigma": 0.0,         # > 0: Gaussian data augmentation (Cohen et al.); 0: a standard classifier
}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader, device, noise_sigma: float = 0.0, seed: int = 0) -> float:
    """Top-1 accuracy on ``loader`` (under fixed-seed noise when ``noise_sigma > 0``)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = total = 0
    for x, y in loader:
        if noise_sigma > 0:
            x = x + noise_sigma * torch.randn(x.shape, generator=gen)
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def train_classifier_from_config(path: str, resume: bool = False, overrides: Mapping[str, Any] | None = None) -> Path:
    """Train the classifier a YAML config describes; returns the run folder (a loadable checkpoint).

    Per epoch: mean training loss and held-out accuracy, logged to ``output_dir/log.jsonl``.
    ``overrides``: command-line values for the keys of :data:`OVERRIDES`.
    """
    from certify.rules import check_sigma

    cfg = load_training_config(path, CLASSIFIER_DEFAULTS, overrides)
    if cfg["noise_sigma"] != 0:
        cfg["noise_sigma"] = check_sigma(cfg["noise_sigma"])
    if cfg["classifier"] is None:
        raise ValueError(f"{path}: 'classifier' is required (e.g. small-cnn)")
    accelerator = make_accelerator(cfg)
    out = Path(cfg["output_dir"])
    state = start_state(out, resume)
    model = (CLASSIFIERS.create(f"{entry_spec(cfg['classifier'])}:{out}") if state is not None
             else CLASSIFIERS.create_entry(cfg["classifier"]))
    if not hasattr(model, "save_pretrained"):
        raise ValueError(f"classifier {entry_spec(cfg['classifier'])!r} has no save_pretrained; it cannot be trained here")
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    train_loader, eval_loader = make_loaders(cfg)
    model, train_loader = accelerator.prepare(model, train_loader)
    optimizer, schedule, start_epoch, steps = make_optimizer(model.parameters(), cfg, len(train_loader), state)
    optimizer = accelerator.prepare(optimizer)
    sigma = float(cfg["noise_sigma"])

    def loss_fn(x, y):
        if sigma > 0:
            x = x + sigma * torch.randn_like(x)
        return F.cross_entropy(model(x), y)

    def evaluate(unwrapped):
        acc = evaluate_classifier(unwrapped, eval_loader, accelerator.device, sigma) if eval_loader else math.nan
        return {"eval_accuracy": acc}

    run_epochs(accelerator, model, optimizer, schedule, train_loader, cfg, out, start_epoch, steps, loss_fn,
               evaluate)
    main = accelerator.is_main_process
    if main and cfg["export_dir"]:
        export_bundle(accelerator.unwrap_model(model), cfg, path, cfg["family"] or entry_spec(cfg["classifier"]))
    accelerator.wait_for_everyone()
    return out
