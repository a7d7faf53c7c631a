"""The trainer kit every trainer uses (classifier, denoiser, DDPM): one config loader, one Accelerator
set-up, one epoch loop, one checkpoint/resume format, one bundle writer.

A trainer is ``train_*_from_config(path, resume, overrides)`` beside its plugin family: it reads its
YAML with :func:`load_training_config` (its own keys on top of :data:`COMMON_DEFAULTS`), builds its
model through the registry, and hands :func:`run_epochs` a loss. The run folder (``output_dir``) is
then a loadable checkpoint after every epoch, with ``training_state.pt`` (optimizer, learning-rate
schedule, epoch, steps, any extra tensors such as an EMA) and ``log.jsonl``; ``resume=True``
continues from it. Runs unchanged on a CPU, one GPU or many (``accelerate launch``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_weights_only

log = logging.getLogger(__name__)

STATE_NAME = "training_state.pt"
LOG_NAME = "log.jsonl"
BUNDLE_NAME = "bundle.json"

#: Keys every training config may set, with their defaults.
COMMON_DEFAULTS: dict[str, Any] = {
    "train_dataset": None,      # dataset spec, e.g. mnist5k:train or hf:cifar10:train
    "eval_dataset": None,       # held-out dataset spec for the per-epoch metrics
    "image_size": None,         # the dataset's size=N: shorter side + centre crop (certify.data.resize_and_crop)
    "eval_max": None,           # evaluate on the first N held-out images only
    "epochs": 1,
    "batch_size": 256,
    "optimizer": "adam",        # adam (the papers') or adamw
    "lr": 1e-3,
    "weight_decay": 0.0,
    "warmup_steps": 0,          # linear learning-rate warm-up over the first optimizer steps
    "lr_step": None,            # multiply the learning rate by lr_gamma every lr_step epochs (None: constant)
    "lr_gamma": 0.1,
    "seed": 0,
    "max_steps": None,          # stop after this many optimizer steps in all (smoke tests)
    "max_minutes": None,        # stop after the epoch that crosses this wall-clock budget
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


def check_training_output(path: str | Path, key: str, explicit: bool = False, run_dir: str | Path | None = None) -> None:
    """Refuse a training output that would overwrite shipped weights, the one check of every trainer.

    The run folder (``output_dir``: weights, training state and log after every epoch) never lies inside
    the packages, nor in or under a folder holding an exported model (``bundle.json``: a shipped model,
    also in a source checkout that is not the one imported), whoever names it. ``export_dir`` (weights,
    ``bundle.json`` and the recipe; never training state, so never the run folder ``run_dir``) lies inside
    the packages only when the command line names it (``explicit``), to refresh a shipped model on purpose.
    Paths are compared resolved (relative, ``..``, symlinks, a trailing slash) with where the packages are
    imported from.

    >>> check_training_output("runs/x", "output_dir")
    """
    target = Path(path).resolve()
    packages = [Path(p).resolve() for name in _PACKAGES for p in importlib.util.find_spec(name).submodule_search_locations]
    package = next((p for p in packages if target == p or p in target.parents), None)
    if key == "output_dir":
        bundle = next((d for d in (target, *target.parents) if (d / BUNDLE_NAME).is_file()), None)
        if package is not None or bundle is not None:
            where = (f"lies inside the installed package ({package})" if package is not None
                     else f"lies in the exported model {bundle} ({BUNDLE_NAME})")
            raise ValueError(f"output_dir {str(path)!r} {where}; a run folder gets training_state.pt and log.jsonl "
                             f"beside its weights, so training never runs there. Name another folder; a shipped "
                             f"model is refreshed with --export-dir {path} (weights only)")
    elif run_dir is not None and target == Path(run_dir).resolve():
        raise ValueError(f"export_dir {str(path)!r} is the run folder (output_dir); an export never holds training "
                         f"state: name another folder")
    elif package is not None and not explicit:
        raise ValueError(f"{key} {str(path)!r} lies inside the installed package ({package}); training never "
                         f"writes there from a config. Name another folder, or pass --{key.replace('_', '-')} "
                         f"{path} on the command line to overwrite shipped weights on purpose")


def _positive_int(cfg: dict[str, Any], key: str, path: Path, minimum: int = 1) -> None:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{path}: {key} must be an integer >= {minimum}, got {value!r}")


def load_training_config(path: str | Path, defaults: Mapping[str, Any],
                         overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config, fill in ``defaults``, apply command-line ``overrides`` (None = not given).

    An unknown key or a missing required one is an error; ``output_dir`` defaults to
    ``runs/<config name>`` and never points into the package (or a shipped model), ``export_dir`` only
    when the command line named it (:func:`check_training_output`).

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    ...     _ = f.write("epochs: 3\\ntrain_dataset: digits:train\\n")
    >>> cfg = load_training_config(f.name, {**COMMON_DEFAULTS}, {"max_steps": 5})
    >>> cfg["epochs"], cfg["max_steps"], cfg["output_dir"].startswith("runs/")
    (3, 5, True)
    >>> os.unlink(f.name)
    """
    from .config import read_config

    path = Path(path)
    raw = read_config(path, known=defaults, what="config file")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = {**defaults, **raw, **given}
    cfg["output_dir"] = cfg.get("output_dir") or f"runs/{path.stem}"
    if not cfg.get("train_dataset"):
        raise ValueError(f"{path}: 'train_dataset' is required")
    for key in ("epochs", "batch_size") + tuple(k for k in ("max_steps", "lr_step") if cfg.get(k) is not None):
        _positive_int(cfg, key, path)
    _positive_int(cfg, "warmup_steps", path, minimum=0)
    for key in ("lr", "weight_decay", "lr_gamma") + (("max_minutes",) if cfg.get("max_minutes") is not None else ()):
        try:
            cfg[key] = float(cfg[key])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {key} must be a number, got {cfg[key]!r}") from None
        if not math.isfinite(cfg[key]) or cfg[key] < 0:
            raise ValueError(f"{path}: {key} must be a finite number >= 0, got {cfg[key]!r}")
    if cfg["optimizer"] not in ("adam", "adamw"):
        raise ValueError(f"{path}: optimizer must be 'adam' or 'adamw', got {cfg['optimizer']!r}")
    for key in ("output_dir", "export_dir"):
        if cfg.get(key):
            check_training_output(cfg[key], key, explicit=key in given, run_dir=cfg["output_dir"])
    return cfg


def make_dataset(spec: str, image_size: int | None = None, max_items: int | None = None) -> torch.utils.data.Dataset:
    """The dataset a spec names, at ``image_size`` through the same resize-and-crop as certification
    (``create_dataset(spec, size=N)``), optionally cut to its first items."""
    from .data import create_dataset

    ds = create_dataset(spec) if image_size is None else create_dataset(spec, size=int(image_size))
    if max_items is not None:
        ds = torch.utils.data.Subset(ds, range(min(int(max_items), len(ds))))
    return ds


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader whose shuffling is seeded (Accelerate keeps it in step across processes)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                       num_workers=num_workers, drop_last=False)


def make_loaders(cfg: Mapping[str, Any]):
    """(shuffled training loader, held-out loader or None) from the config's dataset specs."""
    train = make_loader(make_dataset(cfg["train_dataset"], cfg["image_size"]), cfg["batch_size"], True,
                        cfg["seed"], cfg["num_workers"])
    held_out = (make_loader(make_dataset(cfg["eval_dataset"], cfg["image_size"], cfg["eval_max"]),
                            cfg["batch_size"], False) if cfg["eval_dataset"] else None)
    return train, held_out


def make_accelerator(cfg: Mapping[str, Any]):
    """An ``Accelerator`` for the config, with every rank seeded differently (``seed + rank``).

    Precision is Accelerate's (``accelerate config``, ``--mixed_precision``, ACCELERATE_MIXED_PRECISION)
    unless the config sets ``mixed_precision``. Different seeds per rank make each process draw its
    own noise; the data order is still shared because Accelerate synchronises the samplers.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .launch import warn_if_launch_ran_one_process

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    # Without CUDA, processes started by torchrun (`accelerate launch --multi_gpu`) must be told to form a
    # CPU (gloo) group, or each would train alone on all the data.
    cpu = bool(cfg["cpu"]) or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    accelerator = Accelerator(cpu=cpu, mixed_precision=cfg.get("mixed_precision"))
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


def lr_factor(step: int, steps_per_epoch: int, cfg: Mapping[str, Any]) -> float:
    """The learning rate of optimizer step ``step`` over ``cfg["lr"]``: linear warm-up, then
    ``lr_gamma ** (epoch // lr_step)`` (StepLR per epoch, the papers' schedule).

    >>> cfg = {"warmup_steps": 0, "lr_step": 30, "lr_gamma": 0.1}
    >>> lr_factor(0, 10, cfg), round(lr_factor(300, 10, cfg), 6), lr_factor(0, 10, {**cfg, "warmup_steps": 4})
    (1.0, 0.1, 0.25)
    """
    warm = min(1.0, (step + 1) / cfg["warmup_steps"]) if cfg.get("warmup_steps") else 1.0
    decay = cfg["lr_gamma"] ** ((step // max(1, steps_per_epoch)) // cfg["lr_step"]) if cfg.get("lr_step") else 1.0
    return warm * decay


def make_optimizer(params: Iterable[nn.Parameter], cfg: Mapping[str, Any], steps_per_epoch: int,
                   state: Mapping[str, Any] | None = None):
    """Adam or AdamW and the :func:`lr_factor` schedule (stepped per optimizer step), restored from a
    training ``state`` when resuming; returns ``(optimizer, schedule, start_epoch, steps)``."""
    kind = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    optimizer = kind(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg))
    if state is None:
        return optimizer, schedule, 0, 0
    optimizer.load_state_dict(state["optimizer"])
    steps = int(state["steps"])  # the schedule is a function of the step count: set, not unpickled
    schedule.last_epoch = steps
    schedule.base_lrs = [cfg["lr"]] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = cfg["lr"], cfg["lr"] * lr_factor(steps, steps_per_epoch, cfg)
    log.info("resuming after epoch %d (%d steps)", state["epoch"] + 1, state["steps"])
    return optimizer, schedule, state["epoch"] + 1, state["steps"]


def save_training_state(directory: Path, epoch: int, optimizer, steps: int,
                        extra: Mapping[str, Any] | None = None) -> None:
    """Optimizer, epoch, steps and ``extra`` (tensors, numbers) after ``epoch`` (the schedule follows from
    the steps); written beside its name and renamed into place, read back without unpickling objects."""
    state = {"epoch": int(epoch), "steps": int(steps), "optimizer": optimizer.state_dict(),
             "extra": dict(extra or {})}
    tmp = Path(directory) / (STATE_NAME + ".tmp")
    torch.save(state, tmp)
    tmp.replace(Path(directory) / STATE_NAME)


def load_training_state(directory: Path) -> dict[str, Any] | None:
    """The state :func:`save_training_state` wrote, or ``None`` when the run has not finished an epoch."""
    path = Path(directory) / STATE_NAME
    if not path.is_file():
        return None
    return load_weights_only(path)


def start_state(directory: Path, resume: bool) -> dict[str, Any] | None:
    """The state a trainer goes on from. With ``resume``: the last finished epoch's, or None (a warning, then
    a fresh start) when there is none. Without it: None, and a folder that already holds a run is refused,
    never overwritten (its weights, state and log would give way to a new run's first epoch)."""
    directory = Path(directory)
    if resume:
        state = load_training_state(directory)
        if state is None:
            log.warning("%s holds no finished epoch to resume from; starting from scratch", directory)
        return state
    held = [name for name in (STATE_NAME, LOG_NAME) if (directory / name).is_file()]
    if held:
        raise ValueError(f"{directory} already holds a training run ({', '.join(held)}); pass --resume to go on "
                         f"from it, or choose another output_dir (--output-dir)")
    return None


def append_log(directory: Path, record: Mapping[str, Any]) -> None:
    """One JSON line per epoch in ``log.jsonl``."""
    with open(Path(directory) / LOG_NAME, "a") as f:
        f.write(json.dumps(dict(record), sort_keys=True) + "\n")


def export_bundle(model: nn.Module, cfg: Mapping[str, Any], config_path: str | Path, family: str) -> Path:
    """Write a shippable copy into ``export_dir``: ``model.save_pretrained`` in ``export_dtype``, ``bundle.json``
    (the registry's name for it) and the YAML config that made it."""
    out = Path(cfg["export_dir"])
    model.save_pretrained(out, dtype=getattr(torch, str(cfg["export_dtype"])))
    (out / BUNDLE_NAME).write_text(json.dumps({"family": family, "summary": cfg["summary"]}, indent=2) + "\n")
    recipe = Path(config_path)
    if recipe.resolve() != (out / recipe.name).resolve():
        (out / recipe.name).write_text(recipe.read_text())
    return out


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` everywhere: a classifier that guides but never learns."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_epochs(accelerator, model: nn.Module, optimizer, schedule, train_loader, cfg: Mapping[str, Any],
               out: Path, start_epoch: int, steps: int, loss_fn: Callable, evaluate: Callable, desc: str = "",
               after_step: Callable[[], None] | None = None,
               save: Callable[[nn.Module, Path], Any] | None = None,
               extra_state: Callable[[], Mapping[str, Any]] | None = None) -> int:
    """The epoch loop of every trainer: train, then (main process) evaluate, log and checkpoint.

    ``loss_fn(x, y)`` gives a batch's loss; ``evaluate(unwrapped_model)`` the held-out metrics (a dict);
    ``after_step()`` runs after each optimizer step (an EMA); ``save(unwrapped, out)`` writes the model
    (default ``unwrapped.save_pretrained(out)``); ``extra_state()`` adds tensors to the training state.
    Every epoch ends with the weights checked identical on all processes, then one checkpoint and one
    log line written by the main process. Returns the number of optimizer steps taken in all.
    """
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
    started = time.time()
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
            schedule.step()
            if after_step is not None:
                after_step()
            steps += 1
            total, count = total + value * len(y), count + len(y)
            bar.set_postfix(loss=f"{total / count:.4g}")
            if cfg["max_steps"] is not None and steps >= cfg["max_steps"]:
                break
        accelerator.wait_for_everyone()
        check_ranks_agree(accelerator, model)
        if main:
            unwrapped = accelerator.unwrap_model(model)
            record = {"epoch": epoch + 1, "steps": steps, "loss": total / max(count, 1),
                      "seconds": round(time.time() - t0, 2), "lr": schedule.get_last_lr()[0], **evaluate(unwrapped)}
            log.info("epoch %d: %s", epoch + 1, record)
            training = getattr(unwrapped, "provenance", {}).get("training")
            if isinstance(training, dict):  # checkpoints that describe themselves say how far they got
                training.update(epochs_done=epoch + 1, metrics=record)
            (save or (lambda m, d: m.save_pretrained(d)))(unwrapped, out)
            save_training_state(out, epoch, optimizer, steps, extra_state() if extra_state else None)
            append_log(out, record)
        accelerator.wait_for_everyone()
        if cfg.get("max_minutes") is None:
            continue
        elapsed = accelerator.gather(torch.tensor([time.time() - started], device=accelerator.device)).max()
        if float(elapsed) > 60.0 * cfg["max_minutes"]:  # the slowest clock decides, so every rank stops together
            log.warning("stopping after epoch %d: max_minutes=%s reached", epoch + 1, cfg["max_minutes"])
            break
    return steps
