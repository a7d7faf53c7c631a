"""Training with Accelerate from a YAML config: the standard classifiers here, and shared machinery.

One function, :func:`train_classifier_from_config`, runs unchanged on a CPU, one GPU or many
(``accelerate launch recipes/train_classifier.py --config FILE.yaml``). The helpers below it
(config loading, data loaders, per-rank seeds, the training state written each epoch, the JSON-lines
log) are also what ``denoisers.training`` builds on, so both trainers behave the same way: progress
bars on the main process, a checkpoint after every epoch written by the main process only, and
``resume=True`` continuing the epoch counter and the optimizer state of a killed run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

STATE_NAME = "training_state.pt"
LOG_NAME = "log.jsonl"

#: Keys every training config may set (both trainers), with their defaults.
COMMON_DEFAULTS: dict[str, Any] = {
    "train_dataset": None,      # dataset spec, e.g. mnist5k:train or hf:cifar10:train
    "eval_dataset": None,       # held-out dataset spec for the per-epoch metrics
    "image_size": None,         # resize (shorter side) + centre crop to this size; None keeps images as they are
    "eval_max": None,           # evaluate on the first N held-out images only
    "epochs": 1,
    "batch_size": 256,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_step": None,            # StepLR step size in epochs (None: constant learning rate)
    "lr_gamma": 0.1,
    "seed": 0,
    "max_steps": None,          # stop after this many optimizer steps in all (smoke tests)
    "num_workers": 0,
    "num_threads": None,        # torch.set_num_threads on CPU (1 when sharing a small machine)
    "cpu": False,               # force the CPU even where a GPU is present
    "mixed_precision": None,    # Accelerate's: no, fp16, bf16; None leaves it to `accelerate config` / launch
    "output_dir": None,         # the run folder (default runs/<config name>): checkpoint, state, log, every epoch
    "export_dir": None,         # at the end, also write a shippable copy here (bundle.json included)
    "export_dtype": "float16",
    "summary": "",              # one line for bundle.json (the registry shows it)
    "family": None,             # registry family written into bundle.json
}


#: Command-line overrides every trainer takes (``--output-dir``, ``--export-dir``, ``--epochs``, ``--max-steps``).
OVERRIDES = ("output_dir", "export_dir", "epochs", "max_steps")
_PACKAGES = ("certify", "denoisers", "classifiers")


def check_not_in_package(path: str | Path, key: str, explicit: bool = False) -> None:
    """Refuse a training output inside the installed library (shipped weights live there).

    A config never writes into the package; only a folder named on the command line (``explicit``)
    may, which is how a maintainer refreshes a shipped model on purpose.

    >>> check_not_in_package("runs/x", "output_dir")
    """
    if explicit:
        return
    target = Path(path).resolve()
    for name in _PACKAGES:
        package = (Path(__file__).resolve().parents[1] / name)
        if target == package or package in target.parents:
            raise ValueError(f"{key} {str(path)!r} lies inside the installed package ({package}); training never "
                             f"writes there from a config. Name another folder, or pass --{key.replace('_', '-')} "
                             f"{path} on the command line to overwrite shipped weights on purpose")


def load_training_config(path: str | Path, defaults: Mapping[str, Any],
                         overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config, fill in ``defaults``, apply command-line ``overrides`` (None = not given).

    An unknown key or a missing required one is an error; ``output_dir`` defaults to
    ``runs/<config name>``; neither it nor ``export_dir`` may point into the package unless the
    command line named it.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    ...     _ = f.write("epochs: 3\\ntrain_dataset: digits:train\\n")
    >>> cfg = load_training_config(f.name, {**COMMON_DEFAULTS}, {"max_steps": 5})
    >>> cfg["epochs"], cfg["max_steps"], cfg["output_dir"].startswith("runs/")
    (3, 5, True)
    >>> os.unlink(f.name)
    """
    from certify.config import read_config

    path = Path(path)
    raw = read_config(path, known=defaults, what="config file")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = {**defaults, **raw, **given}
    cfg["output_dir"] = cfg.get("output_dir") or f"runs/{path.stem}"
    if not cfg.get("train_dataset"):
        raise ValueError(f"{path}: 'train_dataset' is required")
    for key in ("epochs", "batch_size") + (("max_steps",) if cfg.get("max_steps") is not None else ()):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"{path}: {key} must be a positive integer, got {cfg[key]!r}")
    for key in ("lr", "weight_decay", "lr_gamma"):
        try:
            cfg[key] = float(cfg[key])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {key} must be a number, got {cfg[key]!r}") from None
        if not math.isfinite(cfg[key]) or cfg[key] < 0:
            raise ValueError(f"{path}: {key} must be a finite number >= 0, got {cfg[key]!r}")
    for key in ("output_dir", "export_dir"):
        if cfg.get(key):
            check_not_in_package(cfg[key], key, explicit=key in given)
    return cfg


class ResizedImages(torch.utils.data.Dataset):
    """Resize the shorter side to ``size`` and centre-crop to ``size x size`` (images of mixed sizes batch)."""

    def __init__(self, dataset: torch.utils.data.Dataset, size: int) -> None:
        self.dataset, self.size = dataset, int(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.dataset[i]
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            scale = self.size / min(h, w)
            nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
            top, left = (nh - self.size) // 2, (nw - self.size) // 2
            x = x[:, top:top + self.size, left:left + self.size].clamp(0, 1)
        return x, y


def make_dataset(spec: str, image_size: int | None = None, max_items: int | None = None) -> torch.utils.data.Dataset:
    """The dataset a spec names (``certify.data``), optionally resized and cut to its first items."""
    from certify.data import create_dataset

    ds = create_dataset(spec)
    if image_size is not None:
        ds = ResizedImages(ds, image_size)
    if max_items is not None:
        ds = torch.utils.data.Subset(ds, range(min(int(max_items), len(ds))))
    return ds


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader whose shuffling is seeded (Accelerate keeps it in step across processes)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                       num_workers=num_workers, drop_last=False)


def make_accelerator(cfg: Mapping[str, Any]):
    """An ``Accelerator`` for the config, with every rank seeded differently (``seed + rank``).

    Different seeds per rank make each process draw its own noise; the data order is still shared
    because Accelerate synchronises the samplers.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from certify.launch import warn_if_launch_ran_one_process

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    # mixed_precision None: Accelerate's own setting (`accelerate config`, ACCELERATE_MIXED_PRECISION) wins.
    accelerator = Accelerator(cpu=bool(cfg["cpu"]), mixed_precision=cfg.get("mixed_precision"))
    warn_if_launch_ran_one_process(accelerator.num_processes)
    set_seed(int(cfg["seed"]), device_specific=True)
    return accelerator


def check_ranks_agree(accelerator, model: nn.Module) -> None:
    """Raise unless every process holds the same weights (gradient sync worked); a no-op alone.

    Called before each checkpoint, so a desynchronised multi-process run fails loudly instead of
    saving the main process's drifting copy.
    """
    if accelerator.num_processes == 1:
        return
    fingerprint = torch.stack([p.detach().double().sum() for p in accelerator.unwrap_model(model).parameters()])
    every = accelerator.gather(fingerprint.to(accelerator.device)[None]).view(accelerator.num_processes, -1)
    if not torch.equal(every, every[:1].expand_as(every)):
        raise RuntimeError("the processes' weights differ after an epoch: gradients were not synchronised")


def make_optimizer(params: Iterable[nn.Parameter], cfg: Mapping[str, Any], state: Mapping[str, Any] | None = None):
    """Adam (the paper's optimizer) and an optional StepLR from the config, restored from a training
    ``state`` when resuming; returns ``(optimizer, scheduler, start_epoch, steps)``."""
    optimizer = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    step = cfg.get("lr_step")
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(step), gamma=cfg["lr_gamma"])
                 if step else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0))
    if state is None:
        return optimizer, scheduler, 0, 0
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log.info("resuming after epoch %d (%d steps)", state["epoch"] + 1, state["steps"])
    return optimizer, scheduler, state["epoch"] + 1, state["steps"]


def make_loaders(cfg: Mapping[str, Any]):
    """(shuffled training loader, held-out loader or None) from the config's dataset specs."""
    train = make_loader(make_dataset(cfg["train_dataset"], cfg["image_size"]), cfg["batch_size"], True,
                        cfg["seed"], cfg["num_workers"])
    held_out = (make_loader(make_dataset(cfg["eval_dataset"], cfg["image_size"], cfg["eval_max"]),
                            cfg["batch_size"], False) if cfg["eval_dataset"] else None)
    return train, held_out


def save_training_state(directory: Path, epoch: int, optimizer, scheduler, steps: int) -> None:
    """Optimizer and scheduler state after ``epoch`` (plain tensors and numbers, no pickled objects)."""
    state = {"epoch": int(epoch), "steps": int(steps), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict()}
    tmp = directory / (STATE_NAME + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / STATE_NAME)


def load_training_state(directory: Path) -> dict[str, Any] | None:
    """The state :func:`save_training_state` wrote, or ``None`` when the run has not finished an epoch."""
    path = Path(directory) / STATE_NAME
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def append_log(directory: Path, record: Mapping[str, Any]) -> None:
    """One JSON line per epoch in ``log.jsonl``."""
    with open(Path(directory) / LOG_NAME, "a") as f:
        f.write(json.dumps(dict(record), sort_keys=True) + "\n")


def export_bundle(model: nn.Module, cfg: Mapping[str, Any], config_path: str | Path, family: str) -> Path:
    """Write a shippable copy: weights in ``export_dtype``, config.json, bundle.json and the YAML config."""
    out = Path(cfg["export_dir"])
    dtype = getattr(torch, str(cfg["export_dtype"]))
    model.save_pretrained(out, dtype=dtype)
    (out / "bundle.json").write_text(json.dumps({"family": family, "summary": cfg["summary"]}, indent=2) + "\n")
    (out / Path(config_path).name).write_text(Path(config_path).read_text())
    return out


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` everywhere: a classifier that guides but never learns."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_classifier(entry: str | Mapping[str, Any]) -> nn.Module:
    """A classifier from a config entry: a spec string, or ``{spec: ..., kwargs: {...}}``.

    >>> build_classifier({"spec": "small-cnn", "kwargs": {"width": 4}}).num_classes
    10
    """
    from . import create_classifier

    if isinstance(entry, str):
        return create_classifier(entry)
    if isinstance(entry, Mapping) and isinstance(entry.get("spec"), str) and set(entry) <= {"spec", "kwargs"}:
        return create_classifier(entry["spec"], **dict(entry.get("kwargs") or {}))
    raise ValueError(f"a classifier entry must be a spec string or {{spec: ..., kwargs: {{...}}}}, got {entry!r}")


def entry_spec(entry: str | Mapping[str, Any]) -> str:
    return entry if isinstance(entry, str) else str(entry["spec"])


def run_epochs(accelerator, model: nn.Module, optimizer, scheduler, train_loader, cfg: Mapping[str, Any],
               out: Path, start_epoch: int, steps: int, loss_fn, evaluate, desc: str = "") -> None:
    """The epoch loop both trainers share: train, then (main process) evaluate, log and checkpoint.

    ``loss_fn(x, y)`` gives a batch's loss; ``evaluate(unwrapped_model)`` the held-out metrics (a dict).
    Every epoch ends with the weights checked identical on all processes, then one checkpoint
    (weights, optimizer, scheduler, epoch) and one log line written by the main process.
    """
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, cfg["epochs"]):
        if cfg["max_steps"] is not None and steps >= cfg["max_steps"]:
            break
        t0, total, count = time.time(), 0.0, 0
        model.train()
        bar = tqdm(train_loader, desc=f"{desc}epoch {epoch + 1}/{cfg['epochs']}", disable=not main, leave=False)
        for x, y in bar:
            loss = loss_fn(x, y)
            value = float(loss.detach())
            if not math.isfinite(value):  # stop before the step: the last checkpoint stays the last good one
                raise ValueError(f"the training loss became {value} at epoch {epoch + 1}, step {steps + 1}; "
                                 f"stopped without saving this epoch (lower lr, check sigma and the data)")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            steps += 1
            total, count = total + value * len(y), count + len(y)
            bar.set_postfix(loss=f"{total / count:.4g}")
            if cfg["max_steps"] is not None and steps >= cfg["max_steps"]:
                break
        scheduler.step()
        accelerator.wait_for_everyone()
        check_ranks_agree(accelerator, model)
        if main:
            unwrapped = accelerator.unwrap_model(model)
            record = {"epoch": epoch + 1, "steps": steps, "loss": total / max(count, 1),
                      "seconds": round(time.time() - t0, 2), "lr": scheduler.get_last_lr()[0], **evaluate(unwrapped)}
            log.info("epoch %d: %s", epoch + 1, record)
            training = getattr(unwrapped, "provenance", {}).get("training")
            if isinstance(training, dict):  # checkpoints that describe themselves say how far they got
                training.update(epochs_done=epoch + 1, metrics=record)
            unwrapped.save_pretrained(out)
            save_training_state(out, epoch, optimizer, scheduler, steps)
            append_log(out, record)
        accelerator.wait_for_everyone()


# --------------------------------------------------------------------------------------------------
# The standard classifier trainer

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
    from certify.smoothing import check_sigma

    cfg = load_training_config(path, CLASSIFIER_DEFAULTS, overrides)
    if cfg["noise_sigma"] != 0:
        cfg["noise_sigma"] = check_sigma(cfg["noise_sigma"])
    if cfg["classifier"] is None:
        raise ValueError(f"{path}: 'classifier' is required (e.g. small-cnn)")
    accelerator = make_accelerator(cfg)
    out = Path(cfg["output_dir"])
    state = load_training_state(out) if resume else None
    model = (build_classifier(f"{entry_spec(cfg['classifier'])}:{out}") if state is not None
             else build_classifier(cfg["classifier"]))
    if not hasattr(model, "save_pretrained"):
        raise ValueError(f"classifier {entry_spec(cfg['classifier'])!r} has no save_pretrained; it cannot be trained here")
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer, scheduler, start_epoch, steps = make_optimizer(model.parameters(), cfg, state)
    train_loader, eval_loader = make_loaders(cfg)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    sigma = float(cfg["noise_sigma"])

    def loss_fn(x, y):
        if sigma > 0:
            x = x + sigma * torch.randn_like(x)
        return F.cross_entropy(model(x), y)

    def evaluate(unwrapped):
        acc = evaluate_classifier(unwrapped, eval_loader, accelerator.device, sigma) if eval_loader else math.nan
        return {"eval_accuracy": acc}

    run_epochs(accelerator, model, optimizer, scheduler, train_loader, cfg, out, start_epoch, steps, loss_fn,
               evaluate)
    main = accelerator.is_main_process
    if main and cfg["export_dir"]:
        export_bundle(accelerator.unwrap_model(model), cfg, path, cfg["family"] or entry_spec(cfg["classifier"]))
    accelerator.wait_for_everyone()
    return out
