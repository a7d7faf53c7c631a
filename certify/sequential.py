"""Anytime-valid sequential certification: decide with as few samples as the image needs.

Cohen's CERTIFY spends a fixed n (100,000) on every image. Here the n fresh samples arrive in chunks
and a betting test (`certify.betting`, Voracek, NeurIPS 2024) is read after each chunk; it stops as
soon as it is sure, with the same 1 - alpha guarantee at whatever time it stops.

Several images share a batch (:func:`certify_at_many`, :func:`certify_anytime_many`): each image
draws fixed chunks of ``step`` samples from its own generator, so results depend on
(seed, index, n0, step, max_n) but not on the batch size or on which images shared a batch.
Counts stay on the device during a batch and are read to the host once per batch, because the
decision to stop (and what to sample next) needs them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm

from .betting import (MIXTURES, SequentialTest, anytime_radius, log_martingale, log_martingale_one_sided,
                      lower_confidence_bound, sequential_test, upper_confidence_bound)
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
    samples were drawn. ``pA_lower`` is L_n at the stop (a valid bound there too, 0 when n = 0).
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
    """Selection (n0 draws, stream "selection"), then test chunks of ``step`` draws ("sequential")."""

    def __init__(self, smoothed: Smoothed, x: torch.Tensor, index: int, seed: int, n0: int, step: int,
                 max_n: int) -> None:
        self.x, self.index, self.n0, self.step, self.max_n = x, index, n0, step, max_n
        self.sel_gen = smoothed.generator(seed, index, "selection")
        self.test_gen = smoothed.generator(seed, index, "sequential")
        self.sel_counts = np.zeros(smoothed.num_classes, dtype=np.int64)
        self.counts = np.zeros(smoothed.num_classes, dtype=np.int64)  # of the test samples
        self.sel_drawn = 0
        self.cA: int | None = None
        self.n = self.nA = 0
        self.done = False

    def next_chunk(self) -> tuple[torch.Generator, int]:
        if self.cA is None:
            return self.sel_gen, min(self.step, self.n0 - self.sel_drawn)
        return self.test_gen, min(self.step, self.max_n - self.n)

    def observe(self, counts: np.ndarray, size: int) -> None:
        if self.cA is None:
            self.sel_counts += counts
            self.sel_drawn += size
            if self.sel_drawn >= self.n0:
                self.cA = int(self.sel_counts.argmax())
            return
        self.n += size
        self.counts += counts
        self.nA = int(self.counts[self.cA])
        self.done = self.check()

    def check(self) -> bool:  # decide after a test chunk; True when finished
        raise NotImplementedError

    def result(self):
        raise NotImplementedError


class _GridJob(_Job):
    def __init__(self, *args, radii: tuple[float, ...], tests: list[SequentialTest], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.radii, self.tests = radii, tests
        self.decision = [0] * len(radii)
        self.decided_at = [0] * len(radii)

    def check(self) -> bool:
        for i, test in enumerate(self.tests):
            if self.decision[i] == 0:
                self.decision[i] = test.decide(self.n, self.nA)
                self.decided_at[i] = self.n
        for i in range(1, len(self.decision)):  # claims form a prefix of the grid (module docstring)
            if self.decision[i - 1] < 0 and self.decision[i] >= 0:
                self.decision[i], self.decided_at[i] = -1, self.n
        return all(self.decision)

    def result(self) -> GridCertificate:
        lower = lower_confidence_bound(self.nA, self.n, self.tests[0].alpha) if self.n else 0.0
        return GridCertificate(self.cA, self.radii, tuple(d > 0 for d in self.decision),
                               tuple(self.decided_at), float(lower), self.nA, self.n, self.n0)


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
        return Certificate(self.cA if radius > 0 else ABSTAIN, radius, self.lower, self.nA, self.n, self.n0, upper)


@torch.inference_mode()
def _run(smoothed: Smoothed, jobs: Iterable[_Job], batch_size: int) -> Iterator[_Job]:
    """Pack chunks of several images into each batch; yield finished jobs in input order (eval mode)."""
    with smoothed.evaluating():
        yield from _packed(smoothed, jobs, batch_size)


def _packed(smoothed: Smoothed, jobs: Iterable[_Job], batch_size: int) -> Iterator[_Job]:
    jobs = iter(jobs)
    active: list[_Job] = []
    finished: dict[int, _Job] = {}
    order: list[int] = []  # ids in input order, for in-order yielding
    exhausted = False
    shape = None
    while True:
        batch: list[tuple[_Job, int]] = []
        used, blocked = 0, False
        for job in active:
            size = job.next_chunk()[1]
            if used + size <= batch_size:
                batch.append((job, size))
                used += size
            else:
                blocked = True  # someone already waits: start no new image this batch
        while used < batch_size and not exhausted and not blocked:
            job = next(jobs, None)
            if job is None:
                exhausted = True
                break
            if shape is None:
                shape = job.x.shape
            elif job.x.shape != shape:
                raise ValueError(f"images packed together must share one shape, got {tuple(job.x.shape)} "
                                 f"after {tuple(shape)}")
            active.append(job)
            order.append(id(job))
            finished[id(job)] = None
            size = job.next_chunk()[1]
            if used + size > batch_size:
                break  # it starts in the next batch
            batch.append((job, size))
            used += size
        if not batch:
            break
        counts, bad = smoothed.sample_batch([(job.x, size, job.next_chunk()[0]) for job, size in batch])
        smoothed.refuse_if(bad, f"a batch of {used} noisy images")
        counts = counts.cpu().numpy()  # the one host read per batch: stopping needs it
        for (job, size), row in zip(batch, counts):
            job.observe(row, size)
            if job.done:
                active.remove(job)
                finished[id(job)] = job
        while order and finished[order[0]] is not None:
            yield finished.pop(order.pop(0))


def _check_engine_args(smoothed: Smoothed, alpha: float, max_n: int, batch_size: int, n0: int,
                       step: int | None) -> int:
    check_alpha(alpha)
    Smoothed.check_counts(max_n=max_n, batch_size=batch_size, n0=n0)
    step = batch_size if step is None else step
    if not (isinstance(step, int) and 1 <= step <= batch_size):
        raise ValueError(f"step must be an int in [1, batch_size={batch_size}], got {step!r}")
    return step


def _indexed(smoothed: Smoothed, images: Iterable[torch.Tensor], indices: Iterable[int] | None):
    indices = indices if indices is not None else range(10**18)
    for index, x in zip(indices, images):
        yield index, smoothed.check_input(x)


def certify_at_many(smoothed: Smoothed, images: Iterable[torch.Tensor], radius: float | Sequence[float],
                    alpha: float, max_n: int, batch_size: int, seed: int = 0,
                    indices: Iterable[int] | None = None, n0: int = 100, step: int | None = None,
                    abstain_alpha: float | None = None, mixture: str = "two-sided",
                    futility: float | None = None) -> Iterator[GridCertificate]:
    """:func:`certify_at` for a stream of images, several per batch; yields results in input order.

    Each image draws ``step`` samples at a time (default: batch_size, one image per batch); with
    step < batch_size up to batch_size // step images share a batch and a finished image's slot
    goes to the next one. ``indices`` name the images' random streams (default 0, 1, 2, ...).

    >>> from torch import nn
    >>> g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=0.5, num_classes=2)
    >>> xs = [torch.full((1, 2, 2), v) for v in (0.1, 0.9)]
    >>> [len(c.certified) for c in certify_at_many(g, xs, [0.1, 0.2], 0.01, 400, 100, step=25)]
    [2, 2]
    """
    step = _check_engine_args(smoothed, alpha, max_n, batch_size, n0, step)
    radii = _check_radii(radius)
    tests = [sequential_test(float(norm.cdf(r / smoothed.sigma)), alpha, max_n, abstain_alpha, mixture, futility)
             for r in radii]
    jobs = (_GridJob(smoothed, x, index, seed, n0, step, max_n, radii=radii, tests=tests)
            for index, x in _indexed(smoothed, images, indices))
    for job in _run(smoothed, jobs, batch_size):
        yield job.result()


def certify_at(smoothed: Smoothed, x: torch.Tensor, radius: float | Sequence[float], alpha: float,
               max_n: int, batch_size: int, seed: int = 0, index: int = 0, n0: int = 100,
               step: int | None = None, abstain_alpha: float | None = None,
               mixture: str = "two-sided", futility: float | None = None) -> GridCertificate:
    """Is g certified at ``radius`` (or at each radius of a grid)? Stop as soon as all are decided.

    cA is Cohen's: the most frequent class among n0 draws of the "selection" stream. Then up to
    max_n fresh draws of the "sequential" stream, checked every ``step`` (default batch_size) draws.
    With probability >= 1 - alpha no radius of the grid is certified wrongly (one alpha for the whole
    grid: see the module docstring). ``mixture="one-sided"`` decides with fewer samples. ``futility``
    (gamma) gives up on a radius once its rate is, with confidence 1 - gamma, below what the test needs by
    max_n (`certify.betting.sequential_test`): never a wrong certificate, at most gamma of power at rates
    the budget can certify (off when None, here; the CLI and compare configs use 0.3,
    `certify.settings.SEQUENTIAL_FUTILITY`).

    >>> from torch import nn
    >>> g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=0.5, num_classes=2)
    >>> c = certify_at(g, torch.full((1, 2, 2), 0.5), [0.25, 0.5], alpha=0.001, max_n=1000, batch_size=100)
    >>> c.radii, c.n <= 1000
    ((0.25, 0.5), True)
    """
    return next(certify_at_many(smoothed, [x], radius, alpha, max_n, batch_size, seed, [index], n0, step,
                                abstain_alpha, mixture, futility))


def certify_anytime_many(smoothed: Smoothed, images: Iterable[torch.Tensor], alpha: float, max_n: int,
                         batch_size: int, seed: int = 0, indices: Iterable[int] | None = None,
                         n0: int = 100, step: int | None = None, rtol: float = 0.05,
                         bound: str = "one-class") -> Iterator[Certificate]:
    """:func:`certify_anytime` for a stream of images, several per batch; yields in input order.

    >>> from torch import nn
    >>> g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=0.5, num_classes=2)
    >>> xs = [torch.full((1, 2, 2), v) for v in (0.1, 0.9)]
    >>> len(list(certify_anytime_many(g, xs, 0.01, 400, 100, step=50)))
    2
    """
    step = _check_engine_args(smoothed, alpha, max_n, batch_size, n0, step)
    if not (isinstance(rtol, (int, float)) and rtol >= 0):
        raise ValueError(f"rtol must be a number >= 0 (a fraction of sigma), got {rtol!r}")
    if bound not in BOUNDS or (bound == "two-class" and smoothed.num_classes < 2):
        raise ValueError(f"bound must be one of {', '.join(BOUNDS)} (two-class needs >= 2 classes), got {bound!r}")
    jobs = (_AnytimeJob(smoothed, x, index, seed, n0, step, max_n, sigma=smoothed.sigma, alpha=alpha,
                        rtol=float(rtol), bound=bound) for index, x in _indexed(smoothed, images, indices))
    for job in _run(smoothed, jobs, batch_size):
        yield job.result()


def certify_anytime(smoothed: Smoothed, x: torch.Tensor, alpha: float, max_n: int, batch_size: int,
                    seed: int = 0, index: int = 0, n0: int = 100, step: int | None = None,
                    rtol: float = 0.05, bound: str = "one-class") -> Certificate:
    """(cA, radius) from the confidence sequence, valid at whatever n the sampling stopped.

    After each chunk: L = the running max of L_n, radius = sigma PhiInv(L) (abstain when L <= 1/2).
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
    return next(certify_anytime_many(smoothed, [x], alpha, max_n, batch_size, seed, [index], n0, step, rtol, bound))


__all__ = [
    "MIXTURES", "GridCertificate", "SequentialTest", "anytime_radius", "certify_anytime", "certify_anytime_many",
    "certify_at", "certify_at_many", "log_martingale", "log_martingale_one_sided", "lower_confidence_bound",
    "sequential_test",
    "upper_confidence_bound",
]
