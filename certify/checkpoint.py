"""Checkpoints: safetensors weights plus a JSON config, from a folder or a hub id.

Nothing here unpickles: legacy ``.pth`` files go through ``torch.load(weights_only=True)``. A network
described by a config is loaded in one order (:func:`build_loaded`): the weights file is read first,
the network is built on the meta device and compared with it, and only then built for real, holding
the file's tensors (one copy of the weights, never a random initialisation beside them).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from safetensors.torch import load_file, save_file

from .errors import one_line, why_unreadable

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
    from .libraries import is_hub_id, reachable

    if is_hub_id(str(dir_or_id)):
        reachable()  # one probe: offline, the hub's cache is read at once instead of retrying for a minute
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(dir_or_id), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "*.json", "*.safetensors"]))
    except Exception as exc:
        raise ValueError(
            f"checkpoint {str(dir_or_id)!r} is neither a local folder nor a reachable hub repo id ({type(exc).__name__}: {exc})"
        ) from exc


def checkpoint_problems(dir_or_id: str | os.PathLike) -> list[str]:
    """What loading a checkpoint folder or hub id would lack, without loading it (see :func:`resolve_dir`).

    >>> checkpoint_problems("/no/such/folder")
    ['no such folder (a checkpoint is a folder with config.json and model.safetensors, or a hub id OWNER/NAME)']
    """
    from .libraries import hub_problems, is_hub_id

    path = Path(dir_or_id).expanduser()
    expected = f"a checkpoint is a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, or a hub id OWNER/NAME"
    if path.is_dir():
        weights = (path / WEIGHTS_NAME).is_file() or any(path.glob("*.pt")) or any(path.glob("*.pth"))
        return [] if (path / CONFIG_NAME).is_file() and weights else [f"the folder lacks {CONFIG_NAME} or {WEIGHTS_NAME}"]
    if path.exists():
        return [f"a file, not a folder ({expected})"]
    if not is_hub_id(str(dir_or_id)):
        return [f"no such folder ({expected})"]
    return hub_problems(str(dir_or_id), (CONFIG_NAME,), "the checkpoint",
                        "give a local folder, or set HF_HOME to a cache that has it")


def save_checkpoint(module: torch.nn.Module, config: dict[str, Any], directory: str | os.PathLike,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (optionally cast to ``dtype``, e.g. fp16).

    Each file is written beside its final name and renamed into place, so a run killed while saving
    leaves the previous checkpoint whole.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in module.state_dict().items()}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(directory / WEIGHTS_NAME)
    tmp = directory / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(directory / CONFIG_NAME)
    return directory


def load_config(dir_or_id: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The folder a checkpoint spec resolves to and the JSON object in its ``config.json``."""
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


#: The largest network a config may ask for, counted as it is allocated: every parameter and buffer at the
#: dtype it is built in (:func:`probe_size`); a loaded network holds its file's tensors, not a copy beside a
#: random initialisation (:func:`build_loaded`: a 138M-parameter ADM peaked at 1.03x its weights, 2.03x
#: before), and a larger file is refused unread. The field's biggest, guided-diffusion's ImageNet 256 UNet,
#: is 552M parameters (2.2 GB) in fewer than 1,000 tensors.
MAX_WEIGHT_BYTES = 32 * 2**30
MAX_WEIGHT_TENSORS = 20_000


class OversizedNetwork(ValueError):
    """A config that asks for a network beyond :data:`MAX_WEIGHT_BYTES` or :data:`MAX_WEIGHT_TENSORS`."""


class _TooLarge(Exception):
    pass


def probe_size(build: Callable[[], torch.nn.Module], source: str) -> torch.nn.Module:
    """``build()`` on the meta device (no memory), counting its weights as they are registered.

    The count stops the build as soon as it passes :data:`MAX_WEIGHT_BYTES` or :data:`MAX_WEIGHT_TENSORS`,
    so a config asking for terabytes (``features: 10**7``) or for a billion layers (``depth: 10**9``)
    is refused (:class:`OversizedNetwork`) within a second or two, before anything is allocated.

    >>> probe_size(lambda: torch.nn.Linear(2, 3), "a config").weight.device
    device(type='meta')
    """
    from torch.nn.modules.module import (register_module_buffer_registration_hook,
                                         register_module_parameter_registration_hook)

    seen = {"bytes": 0, "tensors": 0}

    def count(module: torch.nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            seen["bytes"] += tensor.numel() * tensor.element_size()
            seen["tensors"] += 1
            if seen["bytes"] > MAX_WEIGHT_BYTES or seen["tensors"] > MAX_WEIGHT_TENSORS:
                raise _TooLarge

    hooks = [register_module_parameter_registration_hook(count), register_module_buffer_registration_hook(count)]
    try:
        with torch.device("meta"):
            return build()
    except _TooLarge:
        what = (f"more than {MAX_WEIGHT_BYTES / 2**30:g} GiB of weights" if seen["bytes"] > MAX_WEIGHT_BYTES
                else f"more than {MAX_WEIGHT_TENSORS:,} weight tensors")
        raise OversizedNetwork(f"{source} describes a network of {what}; the config is wrong or not meant for this "
                               f"loader") from None
    finally:
        for hook in hooks:
            hook.remove()


def build_checked(build: Callable[[], torch.nn.Module], source: str) -> torch.nn.Module:
    """``build()`` (a fresh network), after :func:`probe_size` has built it once on the meta device.

    >>> build_checked(lambda: torch.nn.Linear(2, 3), "a config").out_features
    3
    """
    probe_size(build, source)
    return build()


def build_loaded(build: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], source: str, against: str,
                 hint: str = "", described_by: str | None = None,
                 fit: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
                 ) -> torch.nn.Module:
    """The network ``build()`` makes, holding ``state``: the one way a network is loaded from a weights file.

    The caller reads the file first (:func:`read_weights`: a damaged file is refused before anything is
    built). A network that a config describes (``described_by`` names it), of any size, is built on the
    meta device (:func:`probe_size`) and its keys and shapes compared with ``state`` (:func:`check_state`).
    Only then is it built for real, each parameter replaced by a meta tensor as it is registered (before
    its initialisation runs; buffers stay real), and ``state``'s tensors are assigned in their place: the
    weights exist once. ``fit(expected, state)`` may first map ``state``'s names onto the network's.

    >>> state = {"weight": torch.ones(3, 2), "bias": torch.zeros(3)}
    >>> net = build_loaded(lambda: torch.nn.Linear(2, 3), state, "w.pth", "Linear(2, 3)", described_by="a config")
    >>> net.weight.data_ptr() == state["weight"].data_ptr()  # the file's tensor itself, not a copy
    True
    """
    from torch.nn.modules.module import register_module_parameter_registration_hook

    def to_meta(module: torch.nn.Module, name: str, param: torch.Tensor | None) -> torch.Tensor | None:
        if type(param) is torch.nn.Parameter and not param.is_meta:
            return torch.nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        return None

    fit = fit or (lambda expected, given: given)
    if described_by is not None:
        expected = probe_size(build, described_by).state_dict()
        check_state(expected, fit(expected, state), source, against, hint)
    hook = register_module_parameter_registration_hook(to_meta)
    try:
        model = build()
    finally:
        hook.remove()
    expected = model.state_dict()
    state = fit(expected, state)
    check_state(expected, state, source, against, hint)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, assign=True)
    return model


#: Keys under which training scripts commonly nest the state dict.
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one line (:func:`why_unreadable`)."""
    try:
        with warnings.catch_warnings():  # torch's note on a plain pickle's protocol: the refusal says it all
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(why_unreadable(exc, path)) from None


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``.pth``/``.pt``/``.bin`` file read with
    ``torch.load(weights_only=True)`` (never unpickles objects; a state dict nested under
    ``state_dict``/``model``/... is unwrapped). Anything else is one line naming the file, and so is
    a file larger than :data:`MAX_WEIGHT_BYTES` (refused before it is read).
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_WEIGHT_BYTES:
        raise OversizedNetwork(f"{path} is {path.stat().st_size / 2**30:.1f} GiB, more than the "
                               f"{MAX_WEIGHT_BYTES / 2**30:g} GiB of weights a network here may have")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # truncated, or not safetensors at all
            raise ValueError(f"{path} is not a readable safetensors file (truncated or damaged?): "
                             f"{one_line(exc)}") from None
    state = load_weights_only(path)
    for key in NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (it holds a {type(state).__name__})")
    return state


def weights_path(directory: str | os.PathLike) -> Path:
    """The weights file of a checkpoint folder: ``model.safetensors``, else a legacy ``.pth``/``.pt``."""
    directory = Path(directory)
    weights = directory / WEIGHTS_NAME
    if weights.is_file():
        return weights
    legacy = sorted(directory.glob("*.pth")) + sorted(directory.glob("*.pt"))
    if not legacy:
        raise ValueError(f"checkpoint folder {str(directory)!r} has no {WEIGHTS_NAME}")
    return legacy[0]


def check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str, against: str,
                hint: str = "") -> None:
    """Refuse ``state`` unless its keys and shapes are ``expected``'s (a network's ``state_dict()``, on the
    meta device or not): one line, ``SOURCE do not match AGAINST: missing [...]; unexpected [...];
    shape of ...``, then ``hint``.

    >>> check_state(torch.nn.Linear(2, 3).state_dict(), {"weight": torch.ones(3, 3)}, "w.pth", "Linear(2, 3)")
    Traceback (most recent call last):
    ...
    ValueError: w.pth do not match Linear(2, 3): missing ['bias'] (1 in all); shape of 'weight' is (3, 3), Linear(2, 3) expects (3, 2)
    """
    # BatchNorm's step counter is absent from checkpoints older than torch 0.4.1; torch fills it in on loading
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    parts = [f"{what} {keys[:3]}{'...' if len(keys) > 3 else ''} ({len(keys)} in all)"
             for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    if wrong:
        parts.append(f"shape of {wrong[0]!r} is {tuple(state[wrong[0]].shape)}, {against} expects "
                     f"{tuple(expected[wrong[0]].shape)}")
    if parts:
        raise ValueError(f"{source} do not match {against}: " + "; ".join(parts) + (f". {hint}" if hint else ""))


class ConfigCheckpoint:
    """Mixin for ``nn.Module``s whose config travels with their weights: the one save/load mechanism of
    every trained family here (``config.json`` with an ``architecture`` field + ``model.safetensors``).

    A subclass sets ``architecture`` and a ``config`` (a dict of its constructor's keyword arguments,
    with ``architecture``); :meth:`checkpoint_class` may pick a subclass by the stored architecture.

    >>> import tempfile
    >>> class Tiny(ConfigCheckpoint, torch.nn.Linear):
    ...     architecture = "tiny"
    ...     def __init__(self, width=2):
    ...         super().__init__(width, 1)
    ...         self.config = {"architecture": "tiny", "width": width}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = Tiny(width=3).save_pretrained(d)
    ...     Tiny.from_pretrained(d).in_features
    3
    """

    architecture: ClassVar[str] = ""
    config: dict[str, Any]

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (``dtype=torch.float16`` halves the size)."""
        return save_checkpoint(self, self.config, directory, dtype=dtype)

    @classmethod
    def factory(cls, what: str | None = None, **defaults: Any) -> Callable[..., Any]:
        """A registry factory: ``family`` builds a fresh ``cls(**defaults, **options)`` (size-checked);
        ``family:DIR`` (or a hub id) loads a checkpoint, whose config fixes the network."""
        what = what or cls.architecture

        def create(identifier: str | None = None, **kwargs: Any):
            if identifier is None:
                options = {**defaults, **kwargs}
                return build_checked(lambda: cls(**options), f"{what} with options {kwargs}")
            if kwargs:
                raise ValueError(f"a {what} checkpoint ({identifier}) takes no options, got {sorted(kwargs)}: "
                                 f"its config fixes the network")
            return cls.from_pretrained(identifier)

        def check(identifier: str | None = None, **kwargs: Any) -> list[str]:
            return [] if identifier is None else checkpoint_problems(identifier)

        create.__doc__ = f"{what}: fresh with options, or loaded from a checkpoint folder / hub id."
        create.__module__ = cls.__module__  # the registry tells built-ins by the module they come from
        create.check = check  # the registry's preflight check (a checkpoint's files)
        return create

    @classmethod
    def checkpoint_class(cls, architecture: Any, directory: Path) -> type:
        """The class that builds a checkpoint of ``architecture`` (by default: this one, and only its own)."""
        if architecture != cls.architecture:
            raise ValueError(f"{directory} holds a {architecture!r} checkpoint, expected {cls.architecture!r}")
        return cls

    @classmethod
    def from_pretrained(cls, dir_or_id: str | os.PathLike):
        """Load a checkpoint folder or hub id: its weights file first, then the network ``config.json``
        describes, compared with it on the meta device before it is built (:func:`build_loaded`)."""
        directory, config = load_config(dir_or_id)
        arch = config.get("architecture")
        target = cls.checkpoint_class(arch, directory)
        kwargs = {k: v for k, v in config.items() if k != "architecture"}
        state = read_weights(weights_path(directory))

        def build() -> torch.nn.Module:
            try:
                return target(**kwargs)
            except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: a JSON Infinity as a size
                raise ValueError(f"config.json in {directory} does not describe a {arch}: {exc}") from None

        return build_loaded(build, state, f"weights in {str(directory)!r}", "their config",
                            described_by=f"config.json in {directory}").eval()


def weights_digest(module: torch.nn.Module) -> str | None:
    """A digest of a network's state (every parameter and buffer it saves: names, dtypes, shapes, bytes), so that
    a resumed run can tell that its weight files were replaced in between; None while a lazy parameter is not
    built yet (the weights are not known).

    >>> from torch import nn
    >>> weights_digest(nn.Linear(2, 2)) == weights_digest(nn.Linear(2, 2))   # two random initialisations
    False
    """
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict(keep_vars=True).items():
        digest.update(name.encode())
        if isinstance(tensor, torch.nn.parameter.UninitializedTensorMixin):
            return None
        tensor = tensor.detach()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()
