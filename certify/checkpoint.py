"""Checkpoints: safetensors weights plus a JSON config, from a folder or a hub id.

Nothing here unpickles: legacy ``.pth`` files go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def resolve_dir(dir_or_id: str | os.PathLike) -> Path:
    """A local folder as is; anything else is a Hugging Face Hub repo id, downloaded (cached).

    >>> resolve_dir(".").is_dir()
    True
    """
    path = Path(dir_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"checkpoint {str(dir_or_id)!r} is a file; expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(dir_or_id), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "*.json", "*.safetensors"]))
    except Exception as exc:
        raise ValueError(
            f"checkpoint {str(dir_or_id)!r} is neither a local folder nor a reachable hub repo id ({type(exc).__name__}: {exc})"
        ) from exc


def save_checkpoint(module: torch.nn.Module, config: dict[str, Any], directory: str | os.PathLike,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (optionally cast to ``dtype``, e.g. fp16)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in module.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME))
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def load_config(dir_or_id: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    directory = resolve_dir(dir_or_id)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise ValueError(f"checkpoint folder {str(directory)!r} has no {CONFIG_NAME}")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object of settings, got a {type(config).__name__}")
    return directory, config


#: The largest network a config may ask for (weights in fp32); the biggest model of the field,
#: guided-diffusion's ImageNet 256 UNet, is 552M parameters, about 2.2 GB.
MAX_WEIGHT_BYTES = 32 * 2**30


def build_checked(build: Callable[[], torch.nn.Module], source: str) -> torch.nn.Module:
    """``build()``, after checking on the meta device (no memory) that its weights are of a sane size.

    A config asking for a network of terabytes is refused before anything is allocated.

    >>> build_checked(lambda: torch.nn.Linear(2, 3), "a config").out_features
    3
    """
    with torch.device("meta"):
        probe = build()
    size = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    if size > MAX_WEIGHT_BYTES:
        raise ValueError(f"{source} describes a network of {size / 1e9:,.1f} GB of weights (limit "
                         f"{MAX_WEIGHT_BYTES / 2**30:g} GiB); the config is wrong or not meant for this loader")
    return build()


def load_weights_into(module: torch.nn.Module, directory: str | os.PathLike) -> torch.nn.Module:
    """Load ``model.safetensors`` (or a legacy ``.pth``) into ``module``; any mismatch is a clear error."""
    directory = Path(directory)
    weights = directory / WEIGHTS_NAME
    if weights.is_file():
        try:
            state = load_file(str(weights))
        except Exception as exc:
            raise ValueError(f"{weights} is not a readable safetensors file: {exc}") from exc
    else:
        legacy = sorted(directory.glob("*.pth")) + sorted(directory.glob("*.pt"))
        if not legacy:
            raise ValueError(f"checkpoint folder {str(directory)!r} has no {WEIGHTS_NAME}")
        try:
            state = torch.load(legacy[0], map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{legacy[0]} is not a weights-only torch file (pickled objects are refused): "
                             f"{str(exc).splitlines()[0]}") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"the weights in {str(directory)!r} are not a state dict of tensors")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape of {k!r} is {tuple(state[k].shape)}, config expects {tuple(expected[k].shape)}")
        raise ValueError(f"weights in {str(directory)!r} do not match their config: " + "; ".join(parts))
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return module
