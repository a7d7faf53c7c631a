"""Reading weights files without unpickling: safetensors, or ``.pth`` via ``torch.load(weights_only=True)``.

Shared by the torchvision and timm families (``weights_file=`` / ``pretrained_file=``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from certify.checkpoint import read_weights

log = logging.getLogger(__name__)


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


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> nn.Module:
    """Load ``state`` into ``model`` by key; when the names differ but the tensors match one to one in
    order (same count and shapes, as in a port of the same network), pair them in order.

    >>> a, b = nn.Linear(2, 3), nn.Sequential(nn.Linear(2, 3))
    >>> _ = load_state_into(b, a.state_dict())
    >>> bool(torch.equal(a.weight, b[0].weight))
    True
    """
    own = model.state_dict()
    if set(state) == set(own):
        bad = [k for k in own if own[k].shape != state[k].shape]
        if bad:
            raise ValueError(f"{source}: shape mismatch for {bad[:5]} (e.g. {bad[0]}: file "
                             f"{tuple(state[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)})")
        model.load_state_dict(state)
        return model
    theirs = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    mine = [k for k in own if not k.endswith("num_batches_tracked")]
    shapes_match = len(theirs) == len(mine) and all(own[m].shape == v.shape for m, (_, v) in zip(mine, theirs))
    if not shapes_match:
        missing = sorted(set(own) - set(state))[:5]
        raise ValueError(f"{source} does not fit the model: {len(theirs)} tensors in the file vs {len(mine)} in the "
                         f"model, keys missing from the file include {missing}")
    log.info("%s: parameter names differ; pairing %d tensors in order (shapes all match)", source, len(mine))
    model.load_state_dict({m: v for m, (_, v) in zip(mine, theirs)}, strict=False)
    return model
