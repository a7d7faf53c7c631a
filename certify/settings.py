"""What determines a run's results: the typed settings the CLI, compare configs and recipes all build.

`RunSettings` holds the counts, seed and specs; `RunOptions` the typed optional parts (precision,
plugin keywords, sequential-mode choices). Defaults live here only (`RUN_DEFAULTS`); a manifest
records `RunSettings.record`, where unset options are left out, so a run resumes only with the same
settings. The result columns per mode live in `certify.results.COLUMNS`.
"""

from __future__ import annotations

import math
import platform
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from .betting import MIXTURES
from .boundary import BOUNDARIES
from .results import COLUMNS
from .selection import SELECTIONS
from .stats import BOUNDS, check_alpha

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
    step: int | None = None                     # sequential/anytime: first check, least gap (SEQUENTIAL_STEP)
    growth: float | None = None                 # sequential/anytime: later gaps growth n (SEQUENTIAL_GROWTH)
    boundary: str | None = None                 # sequential: "exact" or "ville" (SEQUENTIAL_BOUNDARY)
    mixture: str | None = None                  # sequential: the betting test's prior
    futility: float | str | None = None         # sequential: give up on a radius the budget cannot reach (gamma, or "off")
    selection: str | None = None                # sequential: "argmax" (Cohen's n0 draws) or "all" (SEQUENTIAL_SELECTION)
    bound: str | None = None                    # certify/anytime: "two-class" (Theorem 1 with the runner-up); unset: one-class
    eps: list[float] | None = None              # attack: the L2 radii to attack (ascending)
    attack_steps: int | None = None             # attack: PGD steps (filled from certify.attack.ATTACK_DEFAULTS)
    attack_step_size: float | None = None       # attack: L2 step (unset: 2 eps / steps)
    attack_m: int | None = None                 # attack: noise draws per gradient estimate
    attack_restarts: int | None = None          # attack: starts (the first at x, the others random in the ball)

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
        if self.growth is not None and not (_number(self.growth) and self.growth >= 0):
            raise ValueError(f"growth must be a number >= 0 (0: a check every step samples), got {self.growth!r}")
        if self.boundary not in (None, *BOUNDARIES):
            raise ValueError(f"boundary must be {' or '.join(map(repr, BOUNDARIES))}, got {self.boundary!r}")
        if self.selection not in (None, *SELECTIONS):
            raise ValueError(f"selection must be {' or '.join(map(repr, SELECTIONS))}, got {self.selection!r}")
        if self.mixture is not None and self.mixture not in MIXTURES:
            raise ValueError(f"mixture must be {' or '.join(map(repr, MIXTURES))}, got {self.mixture!r}")
        if self.futility is False:  # YAML reads a bare `off` as false
            self.futility = "off"
        if self.futility not in (None, "off") and not (_number(self.futility) and 0 < self.futility < 1):
            raise ValueError(f"futility must be a probability in (0, 1) or 'off' (unset: {SEQUENTIAL_FUTILITY} in "
                             f"sequential mode), got {self.futility!r}")
        if self.bound not in (None, *BOUNDS):
            raise ValueError(f"bound must be one of {', '.join(BOUNDS)} (or unset: one-class), got {self.bound!r}")
        from .attack import check_eps
        from .smoothing import Smoothed

        Smoothed.check_counts(**{name: getattr(self, name) for name in ("attack_steps", "attack_m", "attack_restarts")
                                 if getattr(self, name) is not None})
        size = self.attack_step_size
        if size is not None and not (_number(size) and size > 0):
            raise ValueError(f"attack_step_size must be a positive number (or unset: 2 eps / steps), got {size!r}")
        if self.eps is not None:
            check_eps(self.eps)
        return self

    def with_attack_defaults(self) -> "RunOptions":
        """The attack's unset counts filled from `certify.attack.ATTACK_DEFAULTS`, so the manifest records them."""
        from .attack import ATTACK_DEFAULTS

        return replace(self, **{f"attack_{k}": v for k, v in ATTACK_DEFAULTS.items() if getattr(self, f"attack_{k}") is None})

    def record(self) -> dict[str, Any]:
        """The options that are set (not None, False or empty), as the manifest stores them."""
        return {k: v for k, v in asdict(self).items() if not (v is None or v is False or v == {} or v == [])}


@dataclass
class RunSettings:
    """Everything that determines a run's results (and so must match to resume it).

    ``mode``: ``certify`` (Cohen's fixed n), ``predict``, ``attack`` (PREDICT at SmoothAdv points for
    each radius of ``options.eps``, n samples each), ``sequential`` (decide each radius of
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
        for name in ("futility", "boundary", "selection"):
            if getattr(self.options, name) is not None and self.mode != "sequential":
                raise ValueError(f"{name} is a sequential-mode option, not for {self.mode!r}")
        if self.options.growth is not None and self.mode not in ("sequential", "anytime"):
            raise ValueError(f"growth is a sequential/anytime-mode option, not for {self.mode!r}")
        if self.mode == "sequential":
            radii = self.options.radii
            if not radii or not all(isinstance(r, (int, float)) and r > 0 for r in radii):
                raise ValueError(f"sequential mode needs positive radii (options['radii'] / --radii), got {radii!r}")
        if self.options.bound == "one-class":
            self.options = replace(self.options, bound=None)  # the default, recorded as unset
        if self.options.bound is not None and self.mode not in ("certify", "anytime"):
            raise ValueError(f"the two-class bound is available in certify (Cohen) and anytime modes, not {self.mode!r}"
                             + (" (its tests decide preset radii with the one-class test; --mode anytime --bound "
                                "two-class gives the two-class radius with early stopping)" if self.mode == "sequential"
                                else ""))
        if self.mode == "sequential":  # the defaults, recorded
            self.options = replace(self.options, futility=_default(self.options.futility, SEQUENTIAL_FUTILITY),
                                   boundary=_default(self.options.boundary, SEQUENTIAL_BOUNDARY),
                                   selection=_default(self.options.selection, SEQUENTIAL_SELECTION))
        if self.mode in ("sequential", "anytime"):
            # the benchmark's schedule whatever the batch (which caps the gap between checks), recorded
            step = min(SEQUENTIAL_STEP, self.batch if isinstance(self.batch, int) else SEQUENTIAL_STEP)
            self.options = replace(self.options, step=_default(self.options.step, step),
                                   growth=_default(self.options.growth, SEQUENTIAL_GROWTH))
        if self.mode == "attack":
            if not self.options.eps:
                raise ValueError("attack mode needs the radii to attack (options['eps'] / --eps), e.g. 0.25,0.5")
            self.options = self.options.with_attack_defaults()
        elif any(getattr(self.options, k) is not None for k in ATTACK_OPTIONS):
            raise ValueError(f"the options {[k for k in ATTACK_OPTIONS if getattr(self.options, k) is not None]} "
                             f"belong to attack mode, not {self.mode!r}")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """The result file's columns: the mode's (`certify.results.COLUMNS`), pB_upper for the two-class bound, and
        last ``source``, where each image came from (a file path under the dataset's folder, or a dataset id)."""
        return COLUMNS[self.mode] + (("pB_upper",) if self.options.bound == "two-class" else ()) + ("source",)

    def indices(self, dataset_len: int) -> list[int]:
        stop = dataset_len if self.max is None else min(self.max, dataset_len)
        return list(range(0, stop, self.skip))

    def record(self) -> dict[str, Any]:
        """The settings as a manifest stores them (and a resumed run compares them)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"},
                "options": self._typed_options().record()}


#: sequential/anytime modes check first after this many samples, and at least this far apart (packing several
#: images into a batch when the batch is larger): an easy image stops after a few hundred samples, not a batch.
SEQUENTIAL_STEP = 10

#: ... and growth n apart once that is more (rounded down to a multiple of the step, at most the batch): 361
#: checks up to 100,000 samples, 2% overshoot on the images that need many (`certify.boundary.check_schedule`).
SEQUENTIAL_GROWTH = 0.02

#: sequential mode's boundary unless told otherwise: "exact" lowers the later thresholds until the exact
#: probability of a wrong certificate on the schedule is alpha (`certify.boundary`); "ville" keeps ln(1/alpha).
SEQUENTIAL_BOUNDARY = "exact"

#: sequential mode's choice of the class to test unless told otherwise: "all" tests every class on the same
#: samples (`certify.selection`: no selection draws, about 1e-4 of alpha for the union over the classes);
#: "argmax" is Cohen's (the most frequent of n0 separate draws, 51 of them when all agree).
SEQUENTIAL_SELECTION = "all"

#: sequential mode's futility level gamma unless told otherwise ("off" turns the rule off). Exact cost
#: (benchmarks/futility_cost.py: max_n = 100,000, p0 = Phi(r/sigma) for r/sigma = 0.5, 1, 2): at most 1.1
#: points of certification probability at rates from q to q + (q - p0), about half the samples at p0; on
#: the MNIST benchmark it keeps Cohen's certified accuracy (README, Sample-efficient certification). 0.2
#: kept the same accuracy but saved nothing on Cohen's 20 digits at sigma 0.5.
SEQUENTIAL_FUTILITY = 0.3

ATTACK_OPTIONS = ("eps", "attack_steps", "attack_step_size", "attack_m", "attack_restarts")


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


__all__ = ["ATTACK_OPTIONS", "AUTOCAST", "BOUNDARIES", "MIXTURES", "RUN_DEFAULTS", "SELECTIONS", "RunOptions", "RunSettings",
           "package_versions"]
