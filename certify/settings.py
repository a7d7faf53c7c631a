"""What determines a run's results: one schema, from which the CLI's flags and help, the compare-config keys
and the manifest's fields are all derived.

`RunSettings` holds the core fields (the pipeline, the counts, the seed), each with its `certify.schema.Option`
(help, how the CLI reads it, the rule that checks it); `RunOptions` holds the optional parts: the options every
mode takes (`COMMON_OPTIONS`: precision, plugin keywords) and the run's mode's own (declared in its module under
`certify.modes`). Each value is checked once, by its option's rule, when the settings are validated; the
mode then fills in its defaults, which the manifest records (`RunSettings.record`), so a run resumes only
with the same settings.
"""

from __future__ import annotations

import platform
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Mapping

from .modes import MODES, Mode, get_mode
from .registry import close_matches
from .schema import FLAG, KEYWORDS, Option, whole
from .rules import PRECISIONS, check_sigma
from .stats import check_alpha

#: the precisions the networks may run in under autocast (the noise stays fp32)
AUTOCAST = tuple(name for name in PRECISIONS if name != "fp32")


def _votes(value: Any) -> int | None:
    """K >= 1 runs per noisy sample; 1 is no vote, recorded as unset (a run with --votes 1 resumes one without)."""
    value = whole("votes")(value)
    return None if value == 1 else value


COMMON_OPTIONS = (
    Option("autocast", "run the networks in lower precision (noise stays fp32); GPU only", choices=AUTOCAST),
    Option("channels_last", "NHWC memory format for the networks and batches", kind=FLAG),
    Option("compile", "run classifier o denoiser through torch.compile", kind=FLAG),
    Option("classifier_kwargs", "keyword for the classifier factory, e.g. pretrained=false or endpoint=URL "
           "(repeatable)", kind=KEYWORDS, flag_name="--classifier-arg", metavar="KEY=VALUE"),
    Option("denoiser_kwargs", "keyword for the denoiser factory, e.g. num_steps=10 (repeatable)", kind=KEYWORDS,
           flag_name="--denoiser-arg", metavar="KEY=VALUE"),
    Option("dataset_kwargs", "keyword for the dataset, e.g. size=224 (repeatable)", kind=KEYWORDS,
           flag_name="--dataset-arg", metavar="KEY=VALUE"),
    Option("label_from_api", "ground truth = a remote API's top label on the clean image (as Salman et al.)",
           kind=FLAG),
    Option("votes", "DensePure's vote: the base classifier is f's majority over K runs of a stochastic denoiser per "
           "noisy sample (e.g. --denoiser-arg num_steps=2 --denoiser-arg eta=1); costs K times the forward passes; "
           "unset = 1 run, no vote", kind=int, check=_votes, metavar="K"),
)
#: set by the run, never by a user: "auto" when the batch was probed (`RunSettings.batch` holds what was found)
BATCH_PROBED = Option("batch", "the batch was probed (--batch auto)", choices=("auto",))


def all_options() -> dict[str, Option]:
    """Every option of the schema by name: the common ones, then each registered mode's (a shared one once)."""
    out = {o.name: o for o in (*COMMON_OPTIONS, BATCH_PROBED)}
    for name in MODES.list():
        for option in get_mode(name).options:
            out.setdefault(option.name, option)
    return out


class RunOptions:
    """The optional parts of a run's identity, by option name; an option nobody set reads as its unset value.

    >>> RunOptions({"autocast": "bf16"}).record()
    {'autocast': 'bf16'}
    >>> RunOptions().compile, RunOptions().radii
    (False, None)
    """

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        values = dict(values or {})
        known = all_options()
        for name in values:
            if name not in known:
                raise ValueError(f"unknown run option {name!r}{close_matches(name, known)}; expected some of "
                                 f"{sorted(known)}")
        object.__setattr__(self, "_values", values)

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> RunOptions:
        return cls(options)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        option = all_options().get(name)
        if option is None:
            raise AttributeError(name)
        return option.unset

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("RunOptions are fixed; use replace(...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunOptions) and self.record() == other.record()

    def __repr__(self) -> str:
        return f"RunOptions({self.record()!r})"

    def items(self):
        """Every option given (unset ones too, e.g. false), as given."""
        return self._values.items()

    def replace(self, **changes: Any) -> RunOptions:
        return RunOptions({**self._values, **changes})

    def record(self) -> dict[str, Any]:
        """The options that are set (not None, False or empty), as the manifest stores them."""
        return {k: v for k, v in self._values.items() if not (v is None or v is False or v == {} or v == [])}


def _core(help: str, **kw: Any) -> dict[str, Any]:
    """A core field's schema entry (its name, default and kind come from the field)."""
    return {"schema": dict(help=help, **kw)}


def _batch(value: Any) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"batch must be an int >= 1 or 'auto', got {value!r}")


def _read_batch(text: str) -> int | str:
    try:
        return text if text == "auto" else int(text)
    except ValueError:
        raise ValueError(f"expected a positive int or 'auto', got {text!r}") from None


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"seed must be an int in [0, 2^63), got {value!r}")
    return value


def _max(value: Any) -> int | None:
    return None if value is None else whole("max")(value)


@dataclass
class RunSettings:
    """Everything that determines a run's results (and so must match to resume it).

    ``mode`` names a `certify.modes` module: ``certify`` (Cohen's fixed n), ``predict``, ``attack``, ``sequential``
    (decide each radius of ``options.radii``, stopping early; ``n`` is the most samples it may use) or ``anytime``,
    or any registered mode. ``max`` follows Cohen's code: images are dataset indices 0, skip, 2 skip, ... below
    ``max``. The batch size is part of it: the noise of one image is drawn batch by batch from its own stream,
    so another batch size draws other (equally valid) noise. ``batch="auto"`` is probed once per run
    (:meth:`Smoothed.find_batch_size`) before anything is recorded, and kept in the manifest, so a resumed run
    reuses it. ``options`` may be given as a mapping.

    >>> RunSettings(classifier="small-cnn", dataset="digits", sigma=0.25, n=100).validate().mode
    'certify'
    """

    classifier: str = field(metadata=_core("classifier spec, e.g. small-cnn.mnist5k or timm:resnet50"))
    dataset: str = field(metadata=_core("dataset spec, e.g. mnist5k:test, foolbox:imagenet, imagefolder:DIR"))
    sigma: float = field(metadata=_core("noise level in [0,1] pixel units", kind=float, check=check_sigma))
    denoiser: str = field(default="none", metadata=_core("denoiser spec"))
    mode: str = field(default="certify", metadata=_core("the certification mode (dsmooth certify --help lists them)"))
    n0: int = field(default=100, metadata=_core("selection samples", kind=int, check=whole("n0")))
    n: int = field(default=100_000, metadata=_core("samples per image (the most, in the modes that stop early)",
                                                   kind=int, check=whole("n")))
    alpha: float = field(default=0.001, metadata=_core("failure probability", kind=float, check=check_alpha))
    batch: int | str = field(default=1000, metadata=_core("noise samples per forward pass, or 'auto': the largest "
                                                          "that fits, probed once", kind=_read_batch, check=_batch))
    skip: int = field(default=1, metadata=_core("certify every SKIP-th image", kind=int, check=whole("skip")))
    max: int | None = field(default=None, metadata=_core("stop before this dataset index (as in Cohen's code)",
                                                         kind=int, check=_max))
    seed: int = field(default=0, metadata=_core("run seed; each image's streams derive from (seed, index)", kind=int,
                                                check=_seed))
    options: RunOptions = field(default_factory=RunOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.options, RunOptions):  # a mapping
            self.options = RunOptions(self.options)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> RunSettings:
        """Settings from a config mapping; an unknown key is an error that names it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown run setting(s) {unknown}{close_matches(unknown[0], known)}; expected some of "
                             f"{sorted(known)}")
        return cls(**config).validate()

    @property
    def run_mode(self) -> Mode:
        return get_mode(self.mode)

    def validate(self) -> RunSettings:
        """Check every value by its rule, then the mode's own rules, then fill in (and so record) its defaults."""
        self.__post_init__()  # options assigned as a mapping after construction
        for option in core_options():
            value = getattr(self, option.name)
            if option.check is not None and value is not MISSING:
                setattr(self, option.name, option.check(value))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES.list())}, got {self.mode!r}"
                             f"{close_matches(self.mode, MODES.list())}")
        mode = self.run_mode
        own = {o.name: o for o in (*COMMON_OPTIONS, BATCH_PROBED, *mode.options)}
        values = {}
        for name, value in self.options.items():
            if name not in own:
                owners = [m for m in MODES.list() if any(o.name == name for o in get_mode(m).options)]
                hint = f" ({mode.hints[name]})" if name in mode.hints else ""
                raise ValueError(f"{name} is an option of the {', '.join(owners)} mode{'s' if len(owners) > 1 else ''}, "
                                 f"not of {self.mode!r}{hint}")
            values[name] = own[name].validate(value)
        self.options = RunOptions(values)
        mode.check(self)
        if self.batch != "auto":  # the defaults that depend on the batch wait for it (`certify.runs.resolve_batch`)
            self.options = self.options.replace(**mode.complete(self))
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """The result file's columns: the mode's, then ``source`` (where each image came from)."""
        return self.run_mode.file_columns(self)

    def indices(self, dataset_len: int) -> list[int]:
        stop = dataset_len if self.max is None else min(self.max, dataset_len)
        return list(range(0, stop, self.skip))

    def record(self) -> dict[str, Any]:
        """The settings as a manifest stores them (and a resumed run compares them)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"},
                "options": self.options.record()}


def core_options() -> list[Option]:
    """The core fields of `RunSettings` as schema entries (for the CLI and compare configs)."""
    return [Option(f.name, default=None if f.default is MISSING else f.default, **f.metadata["schema"])
            for f in fields(RunSettings) if "schema" in f.metadata]


def schema(mode: str | None = None) -> dict[str, Option]:
    """The run schema by name, as users set it: the core fields, the common options and the options of every
    mode (of ``mode`` only, when given). The CLI's flags and the compare-config keys are these entries.

    >>> s = schema()
    >>> s["sigma"].flag, s["attack_steps"].flag, s["classifier_kwargs"].flag
    ('--sigma', '--steps', '--classifier-arg')
    """
    out = {o.name: o for o in core_options()}
    out.update({o.name: o for o in COMMON_OPTIONS})
    for name in [mode] if mode is not None else MODES.list():
        for option in get_mode(name).options:
            out.setdefault(option.name, option)
    return out


def settings_from(values: Mapping[str, Any]) -> RunSettings:
    """Validated settings from flat schema keys (a compare config's): core fields by name, other keys options."""
    known = schema()
    for key in values:
        if key not in known:
            raise ValueError(f"unknown run setting {key!r}{close_matches(key, known)}")
    core = {f.name for f in fields(RunSettings)} - {"options"}
    return RunSettings(**{k: v for k, v in values.items() if k in core},
                       options={k: v for k, v in values.items() if k not in core}).validate()


#: Every core setting's default, for the CLI and compare configs (not restated there).
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
    for kind in ("denoisers", "classifiers", "datasets", "modes"):  # third-party plugins shape the results too
        for ep in entry_points(group=f"denoised_smoothing.{kind}"):
            if ep.dist is not None and ep.dist.name not in out:
                out[ep.dist.name] = ep.dist.version
    return out


__all__ = ["AUTOCAST", "BATCH_PROBED", "COMMON_OPTIONS", "RUN_DEFAULTS", "RunOptions", "RunSettings", "all_options",
           "core_options", "package_versions", "schema", "settings_from"]
