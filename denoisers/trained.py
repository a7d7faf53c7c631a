"""What every *trained* denoiser shares: its config, checkpoints, and the sigma it was trained for.

A trained denoiser (Salman et al. 2020) is fitted to one noise level; it still runs at another one,
but then it is used outside what it learned, so that is allowed with a warning. Architectures
subclass :class:`TrainedDenoiser`, implement :meth:`TrainedDenoiser.denoise` and are looked up by
the ``architecture`` field of their ``config.json`` when loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from certify.checkpoint import ConfigCheckpoint
from certify.rules import check_sigma

log = logging.getLogger(__name__)

#: architecture name (``config.json`` field) -> class; filled in by each subclass.
ARCHITECTURES: dict[str, type["TrainedDenoiser"]] = {}

#: Fields that describe how a checkpoint was made, not how the network is built.
PROVENANCE_KEYS = ("sigma", "objective", "dataset", "classifiers", "training")


class TrainedDenoiser(ConfigCheckpoint, nn.Module):
    """Base class: ``forward(noisy, sigma)`` -> denoised image in [0, 1], same shape.

    Subclasses set ``architecture`` and build their layers from keyword arguments, which become
    ``self.arch_config``; the provenance (trained sigma, objective, dataset, classifier specs)
    lives in ``self.provenance`` and travels with the weights (``save_pretrained`` /
    ``from_pretrained`` of :class:`certify.checkpoint.ConfigCheckpoint`).
    """

    architecture: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.architecture:
            ARCHITECTURES[cls.architecture] = cls

    def __init__(self, arch_config: dict[str, Any], sigma: float | None = None, **provenance: Any) -> None:
        super().__init__()
        unknown = set(provenance) - set(PROVENANCE_KEYS)
        if unknown:
            raise ValueError(f"unknown {self.architecture} option(s) {sorted(unknown)}; expected "
                             f"architecture options {sorted(arch_config)} or {list(PROVENANCE_KEYS)}")
        self.arch_config = dict(arch_config)
        self.provenance: dict[str, Any] = {"sigma": None if sigma is None else check_sigma(sigma), **provenance}
        self._warned_sigmas: set[float] = set()

    @property
    def sigma(self) -> float | None:
        """The noise level this denoiser was trained for (``None`` for a fresh one)."""
        return self.provenance.get("sigma")

    @property
    def config(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **self.arch_config,
                **{k: v for k, v in self.provenance.items() if v is not None}}

    def denoise(self, noisy: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The network's estimate of the clean image, not yet clamped."""
        raise NotImplementedError

    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        """Denoise ``noisy`` (B, C, H, W) seen at noise level ``sigma``; returns images in [0, 1].

        The output is clamped to [0, 1] at the end: the residual form lets the network return any
        value, but the classifier behind it (and a vision API behind a PNG encoder) only knows images
        in [0, 1]; clamping costs nothing where the estimate is already inside and can only move it
        closer to every clean image where it is not.
        """
        if noisy.ndim != 4 or noisy.shape[1] != self.arch_config["in_channels"]:
            raise ValueError(f"{self.architecture} expects images (B, {self.arch_config['in_channels']}, H, W), "
                             f"got shape {tuple(noisy.shape)}")
        return self.denoise(noisy).clamp(0.0, 1.0)

    def prepare(self, sigma: float) -> None:
        """The run's sigma against the one this denoiser was trained for, once, at assembly (`certify.smoothing.
        Smoothed` calls it; sigma itself was checked there): a mismatch is a warning, never per forward pass."""
        sigma = float(sigma)
        trained = self.sigma
        if trained is not None and abs(sigma - trained) > 1e-6 and sigma not in self._warned_sigmas:
            self._warned_sigmas.add(sigma)
            msg = (f"{self.architecture} denoiser was trained for sigma={trained:g} but is used at sigma={sigma:g}; "
                   f"its output is outside what it learned (train one per sigma)")
            log.warning(msg)  # one line, once per sigma and model

    @classmethod
    def checkpoint_class(cls, architecture: Any, directory: Path) -> type["TrainedDenoiser"]:
        """Any registered architecture; called on a subclass, only that one (or its own subclasses).

        >>> import tempfile
        >>> from denoisers.dncnn import DnCNN
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = DnCNN(in_channels=1, depth=3, features=4, sigma=0.5).save_pretrained(d)
        ...     TrainedDenoiser.from_pretrained(d).sigma
        0.5
        """
        if isinstance(architecture, str) and architecture not in ARCHITECTURES:
            from denoisers import list_denoisers

            list_denoisers()  # the architectures register as their plugin modules are imported (a resume may come first)
        if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
            raise ValueError(f"{directory} holds architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}")
        target = ARCHITECTURES[architecture]
        if cls is not TrainedDenoiser and not issubclass(target, cls):
            raise ValueError(f"{directory} holds a {architecture!r} checkpoint, expected {cls.architecture!r}")
        return target
