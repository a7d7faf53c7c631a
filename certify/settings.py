"""What determines a run's results: the typed settings the CLI, compare configs and recipes all build.

`RunSettings` holds the counts, seed and specs; `RunOptions` the typed optional parts (precision,
plugin keywords, sequential-mode choices). Defaults live here only (`RUN_DEFAULTS`); a manifest
records `RunSettings.record`, where unset options are left out, so a run resumes only with the same
settings. The result columns per mode live in `certify.results.COLUMNS`.
"""

from __future__ import annotations

import math
import platform
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .betting import MIXTURES
from .results import COLUMNS
from .stats import check_alpha

AUTOCAST = ("bf16", "fp16")


@dataclass
class RunOptions:
    """The optional parts of a run's identity, each typed; only those set are recorded.

    >>> RunOptions.from_dict({"autocast": "bf16"}).record()
    {'autocast': 'bf16'}
    """

    autocast: str | None = None                 # networks in bf16/fp16 (noise stays fp32)
    channels_last: bool = False                 # NHWC networks and batches
    compile: bool = False                       # f o D through torch.compile
    batch: str | None = None                    # "auto": the run's batch was probed (kept in RunSettings.batch)
    classifier_kwargs: dict[str, Any] = field(default_factory=dict)
    denoiser_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    label_from_api: bool = False                # ground truth = a remote API's top label on the clean image
    radii: list[float] | None = None            # sequential mode: the radii to decide
    step: int | None = None                     # sequential/anytime: samples between checks
    mixture: str | None = None                  # sequential: the betting test's prior

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> "RunOptions":
        """Options from a mapping; an unknown key is an error that names it."""
        options = dict(options or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown run option(s) {unknown}; expected some of {known}")
        return cls(**options)

    def validate(self) -> "RunOptions":
        if self.autocast not in (None, *AUTOCAST):
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST)} (or unset), got {self.autocast!r}")
        for name in ("channels_last", "compile", "label_from_api"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("classifier_kwargs", "denoiser_kwargs", "dataset_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping of keyword arguments, got {getattr(self, name)!r}")
        if self.batch not in (None, "auto"):
            raise ValueError(f"options batch is 'auto' or unset, got {self.batch!r}")
        if self.step is not None and not (isinstance(self.step, int) and self.step >= 1):
            raise ValueError(f"step must be an int >= 1, got {self.step!r}")
        if self.mixture is not None and self.mixture not in MIXTURES:
            raise ValueError(f"mixture must be {' or '.join(map(repr, MIXTURES))}, got {self.mixture!r}")
        return self

    def record(self) -> dict[str, Any]:
        """The options that are set (not None, False or empty), as the manifest stores them."""
        return {k: v for k, v in asdict(self).items() if not (v is None or v is False or v == {} or v == [])}


@dataclass
class RunSettings:
    """Everything that determines a run's results (and so must match to resume it).

    ``mode``: ``certify`` (Cohen's fixed n), ``predict``, ``sequential`` (decide each radius of
    ``options.radii`` with an anytime-valid test, stopping early; ``n`` is the most samples it may
    use) or ``anytime`` (the confidence-sequence radius, stopping when it stops growing).
    ``max`` follows Cohen's code: images are dataset indices 0, skip, 2 skip, ... below ``max``.
    The batch size is part of it: the noise of one image is drawn batch by batch from its own
    stream, so another batch size draws other (equally valid) noise. ``batch="auto"`` probes the
    largest batch that fits once per run (:meth:`Smoothed.find_batch_size`) and keeps it in the
    manifest, so a resumed run reuses it. ``options`` may be given as a mapping.

    >>> RunSettings(classifier="small-cnn", dataset="digits", sigma=0.25, n=100).validate().mode
    'certify'
    """

    classifier: str
    dataset: str
    sigma: float
    denoiser: str = "none"
    mode: str = "certify"
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch: int | str = 1000
    skip: int = 1
    max: int | None = None
    seed: int = 0
    options: RunOptions = field(default_factory=RunOptions)

    def __post_init__(self) -> None:
        self._typed_options()

    def _typed_options(self) -> RunOptions:
        if not isinstance(self.options, RunOptions):  # a mapping, given or assigned later
            self.options = RunOptions.from_dict(self.options)
        return self.options

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "RunSettings":
        """Settings from a config mapping; an unknown key is an error that names it."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown run setting(s) {unknown}; expected some of {sorted(known)}")
        return cls(**config).validate()

    def validate(self) -> "RunSettings":
        if self.mode not in COLUMNS:
            raise ValueError(f"mode must be one of {', '.join(COLUMNS)}, got {self.mode!r}")
        if not (isinstance(self.sigma, (int, float)) and self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be a positive number (noise std in [0,1] pixel units), got {self.sigma!r}")
        check_alpha(self.alpha)
        for name in ("n0", "n", "batch", "skip"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1) and not (name == "batch" and value == "auto"):
                expected = "an int >= 1 or 'auto'" if name == "batch" else "an int >= 1"
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        if self.max is not None and not (isinstance(self.max, int) and self.max >= 1):
            raise ValueError(f"max must be an int >= 1 (a dataset index bound), got {self.max!r}")
        self._typed_options().validate()
        if self.mode == "sequential":
            radii = self.options.radii
            if not radii or not all(isinstance(r, (int, float)) and r > 0 for r in radii):
                raise ValueError(f"sequential mode needs positive radii (options['radii'] / --radii), got {radii!r}")
        return self

    def indices(self, dataset_len: int) -> list[int]:
        stop = dataset_len if self.max is None else min(self.max, dataset_len)
        return list(range(0, stop, self.skip))

    def record(self) -> dict[str, Any]:
        """The settings as a manifest stores them (and a resumed run compares them)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"},
                "options": self._typed_options().record()}


#: Every setting's default, for the CLI and compare configs (not restated there).
RUN_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(RunSettings) if f.default is not MISSING}


def package_versions() -> dict[str, str]:
    """Versions of Python, this package, its main dependencies and every installed plugin distribution."""
    from importlib.metadata import PackageNotFoundError, entry_points, version

    out = {"python": platform.python_version()}
    for name in ("denoised-smoothing", "torch", "torchvision", "timm", "diffusers", "transformers",
                 "accelerate", "scipy", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    for kind in ("denoisers", "classifiers", "datasets"):  # third-party plugins shape the results too
        for ep in entry_points(group=f"denoised_smoothing.{kind}"):
            if ep.dist is not None and ep.dist.name not in out:
                out[ep.dist.name] = ep.dist.version
    return out


__all__ = ["AUTOCAST", "MIXTURES", "RUN_DEFAULTS", "RunOptions", "RunSettings", "package_versions"]
