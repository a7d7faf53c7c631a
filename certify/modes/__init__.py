"""Certification modes: each one module here, found like a plugin (``@register_mode``), each owning its
options and their defaults, its result columns, how a line is written and checked when read back, and the
function that certifies a *stream* of images (packed: several images share each forward pass, a finished
image's room goes to the next, `certify.packing`).

The run loop (`certify.runs`) knows no mode: it reads the dataset, resumes, locks, shards across processes,
hands the mode the images still to do and writes each result as it arrives. Adding a mode is one file here
(or an entry point in the group ``denoised_smoothing.modes``) plus its tests.

>>> sorted(list_modes())
['anytime', 'attack', 'certify', 'predict', 'sequential']
>>> get_mode("sequential").columns[-1]
'certified'
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..lines import check_common
from ..registry import Registry
from ..schema import Option, number, whole
from ..stats import ABSTAIN, BOUNDS

if TYPE_CHECKING:
    from ..settings import RunSettings
    from ..smoothing import Smoothed

MODES = Registry("mode", entry_point_group="denoised_smoothing.modes", package=__name__)
register_mode = MODES.register


class Mode:
    """What a mode is, for the run loop. A subclass sets the class attributes and implements `cells` and
    `stream`; the rest has defaults. Modes are stateless: one instance per use."""

    name: ClassVar[str] = ""
    #: one line for ``--help``
    summary: ClassVar[str] = ""
    #: the result file's columns (Cohen's first where they apply), before the optional ones and ``source``
    columns: ClassVar[tuple[str, ...]] = ()
    #: the options it takes (its own, and those it shares with other modes), each declared once
    options: ClassVar[tuple[Option, ...]] = ()
    #: whether it draws CERTIFY's n0 selection samples (the CLI offers --n0 only then)
    uses_n0: ClassVar[bool] = True
    #: how its own columns are read back (beyond `certify.results`' parsers of the common ones)
    parsers: ClassVar[Mapping[str, Any]] = {}
    #: why another mode's option does not apply here, and what to use instead (said when it is given)
    hints: ClassVar[Mapping[str, str]] = {}

    def __init__(self, identifier: str | None = None) -> None:  # made by the registry, like every plugin
        if identifier is not None:
            raise ValueError(f"mode {self.name!r} takes no identifier, got {self.name}:{identifier}")

    def complete(self, settings: RunSettings) -> dict[str, Any]:
        """Defaults of its unset options, recorded in the manifest (the batch is known by now)."""
        out = {}
        for option in self.options:
            if getattr(settings.options, option.name) in (None, option.unset) and option.default is not None:
                out[option.name] = option.default(settings) if callable(option.default) else option.default
        return out

    def check(self, settings: RunSettings) -> None:
        """Rules between its options and the settings (a ValueError naming the value); none by default."""

    def prepare(self, smoothed: Smoothed, dataset: Any, indices: list[int], settings: RunSettings) -> None:
        """Refuse, before anything is written, a pipeline or dataset the mode cannot run on; nothing by default."""

    def file_columns(self, settings: RunSettings) -> tuple[str, ...]:
        """The columns of a new result file: `columns`, then ``source``."""
        return self.columns + ("source",)

    def cells(self, result: Any) -> dict[str, str]:
        """A result's cells (all columns but idx, label, correct, time and source)."""
        raise NotImplementedError

    def check_line(self, row: Mapping[str, str], settings: Mapping[str, Any]) -> str | None:
        """What is false about one type-checked line given the recorded settings (None: nothing)."""
        return None

    def stream(self, smoothed: Smoothed, images: Iterable[tuple[int, torch.Tensor, int]], settings: RunSettings
               ) -> Iterator[tuple[int, Any, float]]:
        """Certify (idx, image, label) items; yield (position in the stream, result, seconds) as each finishes."""
        raise NotImplementedError

    def line(self, columns: tuple[str, ...], idx: int, label: int, result: Any, seconds: float, source: str) -> str:
        """One TSV line in ``columns``; ``correct`` only for a known label (>= 0) and no abstention."""
        prediction = result.prediction
        cells = {"idx": str(idx), "label": str(label), "time": f"{seconds:.4f}", "source": source,
                 "correct": str(int(prediction == label and label >= 0 and prediction != ABSTAIN)), **self.cells(result)}
        return "\t".join(cells[c] for c in columns) + "\n"


def _bound(value: Any) -> str | None:
    return None if value == "one-class" else value  # the default, recorded as unset


#: options shared by modes (each mode lists the ones it takes)
BOUND = Option("bound", "one-class (Cohen's sigma PhiInv(pA_lower), default) or two-class (Theorem 1 with a bound on "
               "the runner-up class too, alpha split between them)", choices=BOUNDS, check=_bound)
#: the sequential modes check first after this many samples, and at least this far apart (several images share
#: a batch when it is larger): an easy image stops after a few hundred samples, not a batch
SEQUENTIAL_STEP = 10
#: ... and growth n apart once that is more (rounded down to a multiple of the step, at most the batch): 361
#: checks up to 100,000 samples, 2% overshoot on the images that need many (`certify.boundary.check_schedule`)
SEQUENTIAL_GROWTH = 0.02
STEP = Option("step", f"samples before the first check and at least between two (default {SEQUENTIAL_STEP}, or "
              "--batch if smaller); several images share a batch", kind=int, check=whole("step"),
              default=lambda s: min(SEQUENTIAL_STEP, s.batch) if isinstance(s.batch, int) else SEQUENTIAL_STEP)
GROWTH = Option("growth", f"later checks GROWTH n samples apart, at most --batch (default {SEQUENTIAL_GROWTH}; 0: every "
                "--step samples)", kind=float, default=SEQUENTIAL_GROWTH,
                check=lambda v: v if number(v) and v >= 0 else _refuse("growth", "a number >= 0", v))


def check_step(settings: RunSettings) -> None:
    """The gap between two checks fits in one forward pass."""
    step, batch = settings.options.step, settings.batch
    if step is not None and isinstance(batch, int) and step > batch:
        probed = " (found by --batch auto)" if settings.options.batch == "auto" else ""
        raise ValueError(f"step {step} is more than the batch of {batch} samples per forward pass{probed}; pass "
                         f"--step {batch} or less")


def _refuse(name: str, expected: str, value: Any) -> Any:
    raise ValueError(f"{name} must be {expected}, got {value!r}")


def split(items: Iterable[tuple[int, torch.Tensor, int]]) -> tuple[Iterator[int], Iterator[torch.Tensor]]:
    """(indices, images) of a stream of (idx, image, label) items, both lazy (read in step, as the engine does)."""
    a, b = itertools.tee(items)
    return (idx for idx, _, _ in a), (x for _, x, _ in b)


def get_mode(name: str) -> Mode:
    """The mode registered as ``name`` (an unknown name is one line with the close matches)."""
    return MODES.create(name)


def list_modes(pattern: str = "*") -> list[str]:
    return MODES.list(pattern)


def check_line(row: Mapping[str, str], settings: Mapping[str, Any] | None = None) -> str | None:
    """What is false about one line: what it says about itself (`certify.lines.check_common`), then, given the
    recorded settings, what its mode says (`Mode.check_line`).

    >>> s = {"mode": "certify", "sigma": 0.25, "n": 1, "n0": 10, "alpha": 0.001, "options": {}}
    >>> check_line({"label": "3", "predict": "3", "radius": "3.0", "correct": "1", "pA_lower": "0.999",
    ...             "nA": "1", "n": "1", "n0": "10"}, s)
    'pA_lower 0.999 does not follow from nA = 1 of n = 1 (Clopper-Pearson at 0.001: 0.001)'
    """
    problem = check_common(row)
    if problem or not settings or settings.get("mode") not in MODES:
        return problem
    try:
        return get_mode(settings["mode"]).check_line(row, settings)
    except KeyError:  # a file without one of the mode's columns (another tool's): only the above is checked
        return None


__all__ = ["BOUND", "GROWTH", "MODES", "Mode", "SEQUENTIAL_GROWTH", "SEQUENTIAL_STEP", "STEP", "check_line", "check_step", "get_mode",
           "list_modes", "register_mode", "split"]
