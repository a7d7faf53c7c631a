"""Anytime-valid sequential certification: decide with as few samples as the image needs.

Cohen's CERTIFY spends a fixed n (100,000) on every image. Here the n fresh samples arrive in chunks
and a betting test (`certify.betting`, Voracek, NeurIPS 2024) is read at the end of each, on a schedule
fixed in advance (`certify.boundary`); it stops as soon as it is sure, with the same 1 - alpha guarantee.

Several images share a batch (:func:`certify_at_many`, :func:`certify_anytime_many`, packed by
`certify.packing`): each image draws, from its own generators, the chunks its selection and its
schedule of checks ask for, so results depend on (seed, index, n0, the schedule, max_n) but not on the
batch size or on which images shared a batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm

from .betting import (MIXTURES, anytime_radius, log_martingale, log_martingale_one_sided, lower_confidence_bound,
                      upper_confidence_bound)
from .boundary import BOUNDARIES, SequentialTest, check_schedule, sequential_test
from .packing import in_order, run_packed
from .selection import SELECTIONS, every_class_tests, selection_gap, selection_settled
from .smoothing import ABSTAIN, Certificate, Smoothed
from .stats import BOUNDS, check_alpha, radius_from_p, two_class_levels, two_class_radius


# ------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class GridCertificate:
    """Decisions of :func:`certify_at` for one image.

    ``certified[i]`` says whether g is certified to predict ``cA`` on the ball of radius ``radii[i]``
    (radii ascending); ``decided_at[i]`` is the test sample count at which radius i was decided
    (certified, abstained, or max_n reached). ``n`` test samples (``nA`` hits) plus ``n0`` selection
    samples were drawn (at most the n0 asked for: selection stops once its argmax is settled; none with
    selection "all", where cA is the class certified at the smallest radius, or when none is, the most
    frequent test class).
    ``pA_lower`` is L_n at the stop (a valid bound there too; 0 when n = 0, and with selection "all" when no
    class was certified, since cA was then picked from the same samples).
    ``prediction`` is cA when at least one radius is certified, else -1; ``radius`` is the largest
    certified radius (0.0 when none), which is what a TSV line records.
    """

    cA: int
    radii: tuple[float, ...]
    certified: tuple[bool, ...]
    decided_at: tuple[int, ...]
    pA_lower: float
    nA: int
    n: int
    n0: int

    @property
    def prediction(self) -> int:
        return self.cA if any(self.certified) else ABSTAIN

    @property
    def radius(self) -> float:
        return max((r for r, c in zip(self.radii, self.certified) if c), default=0.0)


def _check_radii(radius: float | Sequence[float]) -> tuple[float, ...]:
    values = (radius,) if isinstance(radius, (int, float)) else tuple(radius)
    if not values or not all(isinstance(r, (int, float)) and math.isfinite(r) and r >= 0 for r in values):
        raise ValueError(f"radius must be a number >= 0 or a non-empty sequence of them, got {radius!r}")
    return tuple(sorted({float(r) for r in values}))


# ------------------------------------------------------------------------------------------------
# one image's state machine; the batch loop below drives many of them


class _Job:
    """Selection (stream "selection", `certify.selection`), then test chunks ("sequential") up to each check.

    With ``select=False`` (selection "all") there are no selection draws: the job tests every class.
    Each chunk asks for the fewest draws that could settle it.
    """

    wants_counts = True  # it decides at each check, on the host

    def __init__(self, smoothed: Smoothed, x: torch.Tensor, index: int, seed: int, n0: int,
                 checks: Sequence[int], max_step: int, select: bool = True, tag: int = 0) -> None:
        self.x, self.index, self.n0, self.checks, self.max_step, self.tag = x, index, n0, checks, max_step, tag
        self.seconds = 0.0
        self.max_n = checks[-1]
        self.sel_gen = smoothed.generator(seed, index, "selection")
        self.test_gen = smoothed.generator(seed, index, "sequential")
        self.vote = smoothed.vote_generator(seed, index, tuple(x.shape))  # chain noise of both, in draw order
        self.sel_counts = np.zeros(smoothed.num_classes, dtype=np.int64)
        self.counts = np.zeros(smoothed.num_classes, dtype=np.int64)  # of the test samples
        self.sel_drawn = 0
        self.selecting = select
        self.cA: int | None = None
        self.n = self.k = 0  # k: the next check
        self.done = False

    @property
    def nA(self) -> int:
        return int(self.counts[self.cA]) if self.cA is not None else 0

    def next_chunk(self) -> tuple[torch.Generator, int]:
        if self.selecting:
            return self.sel_gen, min(self.max_step, selection_gap(self.sel_counts, self.n0 - self.sel_drawn))
        return self.test_gen, self.checks[self.k] - self.n

    def look_ahead(self, room: int) -> list[tuple[torch.Generator, int]]:
        """The chunks of the checks after the one `next_chunk` gave, while they fit in ``room`` (`certify.packing`):
        drawn now, read in order, the same draws as one check at a time."""
        if self.selecting:
            return []
        out, n, k = [], self.checks[self.k], self.k + 1
        while k < len(self.checks) and self.checks[k] - n <= room:
            out.append((self.test_gen, self.checks[k] - n))
            room, n, k = room - (self.checks[k] - n), self.checks[k], k + 1
        return out

    def observe(self, counts: np.ndarray, size: int, bad: torch.Tensor) -> None:
        if self.done:  # drawn ahead, past the check where it stopped: not read
            return
        if self.selecting:
            self.sel_counts += counts
            self.sel_drawn += size
            if selection_settled(self.sel_counts, self.n0 - self.sel_drawn):
                self.cA, self.selecting = int(self.sel_counts.argmax()), False
            return
        self.n += size
        self.counts += counts
        if self.n == self.checks[self.k]:
            self.k += 1
            self.done = self.check()

    def check(self) -> bool:  # decide at a check of the schedule; True when finished
        raise NotImplementedError

    def result(self):
        raise NotImplementedError


class _GridJob(_Job):
    """One row of decisions per class under test: cA's after selection, every class's with selection "all"
    until one certifies the smallest radius and becomes cA (the others stop: `certify.selection`)."""

    def __init__(self, *args, radii: tuple[float, ...], tests: list[SequentialTest], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.radii, self.tests = radii, tests
        self.decision = np.zeros((self.counts.size, len(radii)), dtype=np.int8)  # +1 / -1 / 0: undecided
        self.decided_at = np.zeros((self.counts.size, len(radii)), dtype=np.int64)
        self.rows = np.arange(self.counts.size)  # the classes still tested while cA is unknown

    def check(self) -> bool:
        rows = self.rows if self.cA is None else np.array([self.cA])
        D, at, S = self.decision[rows], self.decided_at[rows], self.counts[rows]
        for i, test in enumerate(self.tests):
            running = D[:, i] == 0
            D[:, i] = np.where(running, test.decide(self.n, S), D[:, i])
            at[:, i] = np.where(running, self.n, at[:, i])
        for i in range(1, len(self.tests)):  # claims form a prefix of the grid (`certify.betting`)
            lapsed = (D[:, i - 1] < 0) & (D[:, i] >= 0)
            D[lapsed, i], at[lapsed, i] = -1, self.n
        self.decision[rows], self.decided_at[rows] = D, at
        if self.cA is None:
            won = rows[D[:, 0] > 0]
            self.rows = rows[D[:, 0] == 0]
            if won.size == 0:
                return self.rows.size == 0
            self.cA = int(won[0])
        return bool(np.all(self.decision[self.cA] != 0))

    def result(self) -> GridCertificate:
        cA = self.cA if self.cA is not None else int(self.counts.argmax())
        nA = int(self.counts[cA])
        chosen_here = self.cA is None  # picked from these very samples: L_n would not be a bound on its rate
        lower = lower_confidence_bound(nA, self.n, self.tests[0].alpha) if self.n and not chosen_here else 0.0
        return GridCertificate(cA, self.radii, tuple(bool(d > 0) for d in self.decision[cA]),
                               tuple(int(n) for n in self.decided_at[cA]), float(lower), nA, self.n, self.sel_drawn)


class _AnytimeJob(_Job):
    def __init__(self, *args, sigma: float, alpha: float, rtol: float, bound: str = "one-class", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sigma, self.alpha, self.rtol, self.bound = sigma, alpha, rtol, bound
        self.lower, self.upper = 0.0, 1.0

    def bounds(self, nA: int, nB: int, n: int) -> tuple[float, float]:
        """(L_n for cA, U_n for the runner-up or None): one-class at alpha; two-class at alpha/2 for cA and
        alpha/(2(K-1)) for each other class (the largest count gives the largest bound), as in Cohen mode."""
        if self.bound == "one-class":
            return float(lower_confidence_bound(nA, n, self.alpha)), None
        level_a, level_b = two_class_levels(self.alpha, len(self.counts))
        return float(lower_confidence_bound(nA, n, level_a)), float(upper_confidence_bound(nB, n, level_b))

    def radius(self, lower: float, upper: float | None) -> float:
        if upper is None:
            return radius_from_p(self.sigma, lower)
        return two_class_radius(self.sigma, lower, min(upper, 1.0 - lower))

    def check(self) -> bool:
        # running max of L_n, running min of U_n: {exists n: L_n > p} is the event Ville bounds (for U_n,
        # per class: the largest other count's bound covers every other class at that n)
        nB = int(np.delete(self.counts, self.cA).max()) if len(self.counts) > 1 else 0
        lower, upper = self.bounds(self.nA, nB, self.n)
        self.lower = max(self.lower, lower)
        self.upper = min(self.upper, upper) if upper is not None else None
        if self.n >= self.max_n:
            return True
        # stopping rule: if the rates stayed at S/n, max_n draws would add < rtol * sigma
        scale = self.max_n / self.n
        projected = self.radius(*self.bounds(round(self.nA * scale), round(nB * scale), self.max_n))
        return projected - self.radius(self.lower, self.upper) < self.rtol * self.sigma

    def result(self) -> Certificate:
        radius = self.radius(self.lower, self.upper)
        upper = None if self.upper is None else min(self.upper, 1.0 - self.lower)
        return Certificate(self.cA if radius > 0 else ABSTAIN, radius, self.lower, self.nA, self.n, self.sel_drawn, upper)


def _schedule(smoothed: Smoothed, alpha: float, max_n: int, batch_size: int, n0: int, step: int | None,
              growth: float, max_step: int | None) -> tuple[tuple[int, ...], int]:
    """(checks, max_step) after checking the engine's arguments; step and max_step default to batch_size."""
    check_alpha(alpha)
    Smoothed.check_counts(max_n=max_n, batch_size=batch_size, n0=n0)
    step = batch_size if step is None else step
    if not (isinstance(step, int) and 1 <= step <= batch_size):
        raise ValueError(f"step must be an int in [1, batch_size={batch_size}], got {step!r}")
    max_step = batch_size if max_step is None else max_step
    if not (isinstance(max_step, int) and step <= max_step <= batch_size):
        raise ValueError(f"max_step must be an int in [step={step}, batch_size={batch_size}], got {max_step!r}")
    return check_schedule(max_n, step, growth, max_step), max_step


def _indexed(smoothed: Smoothed, images: Iterable[torch.Tensor], indices: Iterable[int] | None):
    """(position, stream index, checked image) for each image; the indices default to the positions."""
    indices = indices if indices is not None else itertools.count()
    for k, (index, x) in enumerate(zip(indices, images)):
        yield k, index, smoothed.check_input(x)


def certify_at_many(smoothed: Smoothed, images: Iterable[torch.Tensor], radius: float | Sequence[float],
                    alpha: float, max_n: int, batch_size: int, seed: int = 0,
                    indices: Iterable[int] | None = None, n0: int = 100, step: int | None = None,
                    abstain_alpha: float | None = None, mixture: str = "two-sided",
                    futility: float | None = None, growth: float = 0.0, max_step: int | None = None,
                    boundary: str = "ville", selection: str = "argmax") -> Iterator[GridCertificate]:
    """:func:`certify_at` for a stream of images, several per batch; yields results in input order
    (:func:`certify_at_stream` yields them as images finish)."""
    yield from in_order(certify_at_stream(smoothed, images, radius, alpha, max_n, batch_size, seed, indices, n0, step,
                                          abstain_alpha, mixture, futility, growth, max_step, boundary, selection))


def certify_at_stream(smoothed: Smoothed, images: Iterable[torch.Tensor], radius: float | Sequence[float],
                      alpha: float, max_n: int, batch_size: int, seed: int = 0,
                      indices: Iterable[int] | None = None, n0: int = 100, step: int | None = None,
                      abstain_alpha: float | None = None, mixture: str = "two-sided",
                      futility: float | None = None, growth: float = 0.0, max_step: int | None = None,
                      boundary: str = "ville", selection: str = "argmax", look_ahead: bool = True
                      ) -> Iterator[tuple[int, GridCertificate, float]]:
    """:func:`certify_at` for a stream of images, several per batch; yields (position, result, seconds) as each
    finishes.

    The tests are read on `certify.boundary.check_schedule` (max_n, step, growth, max_step): every
    ``step`` draws (default batch_size: one image per batch), or growing with ``growth`` up to
    ``max_step`` (default batch_size) draws apart. Chunks smaller than the batch are packed, and a
    finished image's slot goes to the next one. ``indices`` name the images' random streams (default
    0, 1, 2, ...). ``boundary="exact"`` calibrates the later thresholds on that schedule.
    ``selection="all"`` tests every class instead of Cohen's argmax of n0 draws (`certify.selection`).

    >>> from torch import nn
    >>> g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=0.5, num_classes=2)
    >>> xs = [torch.full((1, 2, 2), v) for v in (0.1, 0.9)]
    >>> sorted((k, len(c.certified)) for k, c, _ in certify_at_stream(g, xs, [0.1, 0.2], 0.01, 400, 100, step=25))
    [(0, 2), (1, 2)]
    """
    checks, max_step = _schedule(smoothed, alpha, max_n, batch_size, n0, step, growth, max_step)
    radii = _check_radii(radius)
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    abstain_alpha = alpha if abstain_alpha is None else abstain_alpha

    def tests_at(level: float) -> list[SequentialTest]:
        return [sequential_test(float(norm.cdf(r / smoothed.sigma)), level, max_n, abstain_alpha, mixture, futility,
                                checks, boundary) for r in radii]

    tests = tests_at(alpha) if selection == "argmax" else every_class_tests(tests_at, alpha, smoothed.num_classes)
    jobs = (_GridJob(smoothed, x, index, seed, n0, checks, max_step, select=selection == "argmax", tag=k, radii=radii,
                     tests=tests) for k, index, x in _indexed(smoothed, images, indices))
    for job in run_packed(smoothed, jobs, batch_size, look_ahead):
        yield job.tag, job.result(), job.seconds


def certify_at(smoothed: Smoothed, x: torch.Tensor, radius: float | Sequence[float], alpha: float,
               max_n: int, batch_size: int, seed: int = 0, index: int = 0, n0: int = 100,
               step: int | None = None, abstain_alpha: float | None = None,
               mixture: str = "two-sided", futility: float | None = None, growth: float = 0.0,
               max_step: int | None = None, boundary: str = "ville", selection: str = "argmax") -> GridCertificate:
    """Is g certified at ``radius`` (or at each radius of a grid)? Stop as soon as all are decided.

    cA is Cohen's: the most frequent class among n0 draws of the "selection" stream (drawn until it
    cannot change); ``selection="all"`` skips those draws and tests every class (`certify.selection`).
    Then up to max_n fresh draws of the "sequential" stream, read at the checks of
    :func:`certify_at_many`. With probability >= 1 - alpha no radius of the grid is certified wrongly
    (one alpha for the whole grid: `certify.betting`). ``mixture="one-sided"`` and ``boundary="exact"``
    decide with fewer samples (`certify.boundary`). ``futility`` (gamma) gives up on a radius once its rate
    is, with confidence 1 - gamma, below what the test needs by max_n (`certify.boundary.sequential_test`):
    never a wrong certificate, at most gamma of power at rates the budget can certify. Here every
    option defaults to the plain test; the CLI's defaults are `certify.settings`' (one-sided, exact,
    futility 0.3, step 10, growth 0.02, selection "all").

    >>> from torch import nn
    >>> g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=0.5, num_classes=2)
    >>> c = certify_at(g, torch.full((1, 2, 2), 0.5), [0.25, 0.5], alpha=0.001, max_n=1000, batch_size=100)
    >>> c.radii, c.n <= 1000
    ((0.25, 0.5), True)
    """
    return next(certify_at_many(smoothed, [x], radius, alpha, max_n, batch_size, seed, [index], n0, step,
                                abstain_alpha, mixture, futility, growth, max_step, boundary, selection))


def certify_anytime_many(smoothed: Smoothed, images: Iterable[torch.Tensor], alpha: float, max_n: int,
                         batch_size: int, seed: int = 0, indices: Iterable[int] | None = None,
                         n0: int = 100, step: int | None = None, rtol: float = 0.05,
                         bound: str = "one-class", growth: float = 0.0,
                         max_step: int | None = None) -> Iterator[Certificate]:
    """:func:`certify_anytime` for a stream of images, several per batch; yields in input order.

    >>> from torch import nn
    >>> g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=0.5, num_classes=2)
    >>> xs = [torch.full((1, 2, 2), v) for v in (0.1, 0.9)]
    >>> len(list(certify_anytime_many(g, xs, 0.01, 400, 100, step=50)))
    2
    """
    yield from in_order(certify_anytime_stream(smoothed, images, alpha, max_n, batch_size, seed, indices, n0, step,
                                               rtol, bound, growth, max_step))


def certify_anytime_stream(smoothed: Smoothed, images: Iterable[torch.Tensor], alpha: float, max_n: int,
                           batch_size: int, seed: int = 0, indices: Iterable[int] | None = None,
                           n0: int = 100, step: int | None = None, rtol: float = 0.05,
                           bound: str = "one-class", growth: float = 0.0,
                           max_step: int | None = None, look_ahead: bool = True
                           ) -> Iterator[tuple[int, Certificate, float]]:
    """:func:`certify_anytime` for a stream of images, several per batch; yields (position, result, seconds) as
    each finishes."""
    checks, max_step = _schedule(smoothed, alpha, max_n, batch_size, n0, step, growth, max_step)
    if not (isinstance(rtol, (int, float)) and rtol >= 0):
        raise ValueError(f"rtol must be a number >= 0 (a fraction of sigma), got {rtol!r}")
    if bound not in BOUNDS or (bound == "two-class" and smoothed.num_classes < 2):
        raise ValueError(f"bound must be one of {', '.join(BOUNDS)} (two-class needs >= 2 classes), got {bound!r}")
    jobs = (_AnytimeJob(smoothed, x, index, seed, n0, checks, max_step, tag=k, sigma=smoothed.sigma, alpha=alpha,
                        rtol=float(rtol), bound=bound) for k, index, x in _indexed(smoothed, images, indices))
    for job in run_packed(smoothed, jobs, batch_size, look_ahead):
        yield job.tag, job.result(), job.seconds


def certify_anytime(smoothed: Smoothed, x: torch.Tensor, alpha: float, max_n: int, batch_size: int,
                    seed: int = 0, index: int = 0, n0: int = 100, step: int | None = None,
                    rtol: float = 0.05, bound: str = "one-class", growth: float = 0.0,
                    max_step: int | None = None) -> Certificate:
    """(cA, radius) from the confidence sequence, valid at whatever n the sampling stopped.

    At each check (:func:`certify_at_many`'s schedule): L = the running max of L_n, radius = sigma PhiInv(L)
    (abstain when L <= 1/2).
    ``bound="two-class"``: L_n at alpha/2 and U = the running min of the runner-up's upper confidence
    sequence at alpha/(2(K-1)), radius sigma/2 (PhiInv(L) - PhiInv(U)) (Cohen mode's split).
    Stopping rule: stop at max_n, or once the projected gain is small: if the hit rate stayed at
    S/n, the bound at max_n would raise the radius by less than ``rtol * sigma``. The rule only
    spends or saves samples; the radius is valid at any stopping time.

    >>> from torch import nn
    >>> g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=0.5, num_classes=2)
    >>> c = certify_anytime(g, torch.full((1, 2, 2), 0.5), alpha=0.001, max_n=1000, batch_size=100)
    >>> c.n <= 1000 and c.radius >= 0
    True
    """
    return next(certify_anytime_many(smoothed, [x], alpha, max_n, batch_size, seed, [index], n0, step, rtol, bound,
                                     growth, max_step))


__all__ = [
    "BOUNDARIES", "MIXTURES", "SELECTIONS", "GridCertificate", "SequentialTest", "anytime_radius",
    "certify_anytime", "certify_anytime_many", "certify_anytime_stream", "certify_at", "certify_at_many",
    "certify_at_stream", "check_schedule", "log_martingale",
    "log_martingale_one_sided", "lower_confidence_bound", "sequential_test", "upper_confidence_bound",
]
