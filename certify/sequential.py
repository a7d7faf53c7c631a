"""Anytime-valid sequential certification: decide with as few samples as the image needs.

Cohen's CERTIFY spends a fixed n (100,000) on every image. Here the n fresh samples arrive in chunks
and a betting test (Voracek, NeurIPS 2024) is read after each chunk; it stops as soon as it is sure.

The statistic. With S hits of the candidate class cA among n samples and the Beta(1/2, 1/2) prior,

    log M_n(p) = betaln(S + 1/2, n - S + 1/2) - betaln(1/2, 1/2) - S ln p - (n - S) ln(1 - p)

is the log of a mixture of likelihood ratios q^S (1-q)^(n-S) / (p^S (1-p)^(n-S)), a nonnegative
martingale with mean 1 when the true hit rate is p. Ville's inequality gives
P_p(exists n: M_n(p) >= 1/alpha) <= alpha, so every statement below holds at any stopping time,
however the stopping was decided (batch ends, several radii, budget).

Three facts, used throughout (S and n fixed, S real, 0 < S/n < 1 where it matters):
  (a) p -> log M_n(p) is strictly decreasing on (0, S/n]: its derivative is (n p - S) / (p (1 - p)).
  (b) log M_n(S/n) <= 0: a mixture of likelihoods is at most the largest one, q = S/n.
  (c) S -> log M_n(p) is convex (log Beta is convex, the rest is linear in S).

The confidence sequence. L_n = the p in (0, S/n) with log M_n(p) = ln(1/alpha); by (a) and (b) it is
unique and every p < L_n has M_n(p) > 1/alpha. So L_n > p_true implies M_n(p_true) > 1/alpha, and
P(exists n: L_n > p_true) <= alpha: the running maximum of L_n is a lower bound on p_true that holds
at all times at once. :func:`anytime_radius` reads it as sigma PhiInv(L_n).

The test at one radius, of the null "p <= p0" with p0 = Phi(r / sigma). Two mixtures (``mixture``):
- "two-sided" (the default, REFERENCE section 4): certify at n when S >= p0 n and log M_n(p0) >=
  ln(1/alpha), which by (a) is the same as L_n >= p0. Under any p_true <= p0 a certificate needs
  L_n > p_true at some n: probability <= alpha. By (b) and (c) the region is an upper set {S >= s_n}.
- "one-sided": the same Beta(1/2, 1/2) prior restricted to the alternative q > p0 (renormalized),

      log M+_n(p0) = log M_n(p0) + ln P(Beta(S + 1/2, n - S + 1/2) > p0) - ln P(Beta(1/2, 1/2) > p0).

  Each ratio (q/p0)^X ((1-q)/(1-p0))^(1-X) with q > p0 has mean p q/p0 + (1-p)(1-q)/(1-p0) <= 1 for
  every p <= p0, so M+ is a nonnegative supermartingale under the whole null and Ville applies. No prior
  mass is spent on q < p0, which buys about a fifth fewer samples on certifiable images (measured
  with :meth:`SequentialTest.operating_characteristics`). Every ratio grows with S, so the region is
  again an upper set; and M+ < 1 when S < p0 n (each ratio is), so s_n >= p0 n as before.
The table :class:`SequentialTest` holds s_n, so a check is one lookup.

A grid of radii shares one alpha. Claims form a prefix of the ascending grid: r_i is certified only if
the tests of r_1..r_i have all crossed (each at some time before the stop). If any claim is wrong, let
i* be the smallest i with p0(r_i) > p_true; the claims, being a prefix that reaches past i*, include
r_i*, so the test at r_i*, whose null holds, crossed: one event of probability <= alpha, whatever the
grid, the order of decisions or the stopping rule. No union bound is needed. (With the two-sided
mixture the thresholds are nested across radii and the prefix rule never changes a decision.)

The certificate. cA comes from n0 samples of an independent stream ("selection", as in Cohen);
given cA the test samples are i.i.d. Bernoulli(p_cA). If p_cA >= Phi(r/sigma) > 1/2, g is constant
(= cA) on the L2 ball of radius r (Cohen et al. 2019, Theorem 1), so a wrong certificate at r needs
p_cA < p0(r): probability <= alpha as above.

Early abstain (power only, never validity): the mirror test rejects p >= p0 when S <= p0 n and
log M_n(p0) >= ln(1/abstain_alpha) (one-sided: the prior on q < p0), a lower set {S <= a_n}; and
the test gives up when even all remaining samples hitting could not reach s_m for any m <= max_n.

Several images share a batch (:func:`certify_at_many`, :func:`certify_anytime_many`): each image
draws fixed chunks of ``step`` samples from its own generator, so results depend on
(seed, index, n0, step, max_n) but not on the batch size or on which images shared a batch.
Counts stay on the device during a batch and are read to the host once per batch, because the
decision to stop (and what to sample next) needs them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import betaln, xlog1py, xlogy
from scipy.stats import beta, norm

from .smoothing import ABSTAIN, Certificate, Smoothed
from .stats import _check_alpha

logger = logging.getLogger(__name__)

_LOG_PRIOR_NORM = float(betaln(0.5, 0.5))  # ln(pi)
MIXTURES = ("two-sided", "one-sided")
_BISECTIONS = 64


def log_martingale(S, n, p):
    """log M_n(p) of the Beta(1/2, 1/2) mixture betting martingale (vectorized over S, n, p).

    >>> round(float(log_martingale(10, 10, 0.5)), 4)   # ten hits in ten draws against p = 1/2
    5.1953
    """
    S = np.asarray(S, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    return betaln(S + 0.5, n - S + 0.5) - _LOG_PRIOR_NORM - xlogy(S, p) - xlog1py(n - S, -p)


def log_martingale_one_sided(S, n, p0: float, side: str = "above"):
    """log M+_n(p0): the Beta(1/2, 1/2) mixture restricted to q > p0 (``side="above"``) or q < p0.

    A nonnegative supermartingale under every hit rate p <= p0 (above) or p >= p0 (below): the
    one-sided test of the module docstring. Vectorized over S and n.

    >>> a = float(log_martingale_one_sided(10, 10, 0.5))
    >>> round(a, 4), a > float(log_martingale(10, 10, 0.5))   # the prior's mass all on the alternative
    (5.8883, True)
    """
    if side not in ("above", "below"):
        raise ValueError(f"side must be 'above' or 'below', got {side!r}")
    S = np.asarray(S, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    tail = beta.logsf if side == "above" else beta.logcdf
    with np.errstate(divide="ignore"):  # a tail that underflows is -inf: no evidence, as it should be
        restricted = tail(p0, S + 0.5, n - S + 0.5) - tail(p0, 0.5, 0.5)
    return log_martingale(S, n, p0) + restricted


def lower_confidence_bound(S, n, alpha: float):
    """L_n: the anytime-valid (1 - alpha) lower bound on the hit rate after S hits in n draws.

    The root in (0, S/n) of log M_n(p) = ln(1/alpha): Brent's method for one (S, n), bisection
    for arrays; 0 when S = 0.
    P(exists n: L_n > p) <= alpha under i.i.d. Bernoulli(p) draws (module docstring).

    >>> round(float(lower_confidence_bound(100_000, 100_000, 0.001)), 6)
    0.999868
    """
    _check_alpha(alpha)
    S, n = np.broadcast_arrays(np.asarray(S, dtype=np.float64), np.asarray(n, dtype=np.float64))
    if np.any((S < 0) | (S > n)):
        raise ValueError(f"need 0 <= S <= n, got S={S!r}, n={n!r}")
    target = math.log(1.0 / alpha)
    if S.ndim == 0:  # the per-batch path: ~10 evaluations instead of 64
        if S == 0:
            return 0.0
        f = lambda p: float(log_martingale(S, n, p)) - target
        root = brentq(f, 1e-300, float(S / n), xtol=1e-16, rtol=4 * np.finfo(float).eps)
        while f(root) < 0:  # stay on the rejected side of the root, never above it
            root = np.nextafter(root, 0.0)
        return float(root)
    lo = np.zeros_like(S)
    hi = np.divide(S, n, out=np.zeros_like(S), where=n > 0)
    for _ in range(_BISECTIONS):  # invariant: log M(lo) >= target > log M(hi), by (a) and (b)
        mid = 0.5 * (lo + hi)
        above = log_martingale(S, n, mid) >= target
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return lo


def upper_confidence_bound(S, n, alpha: float):
    """U_n = 1 - L_n(misses): the mirror anytime-valid (1 - alpha) upper bound on the hit rate.

    >>> round(float(upper_confidence_bound(0, 100, 0.05)), 4)   # no hit in 100 draws
    0.057
    """
    return 1.0 - np.asarray(lower_confidence_bound(np.asarray(n) - np.asarray(S), n, alpha))


def anytime_radius(S: int, n: int, sigma: float, alpha: float) -> float:
    """sigma PhiInv(L_n), or 0.0 when L_n <= 1/2 (nothing certified).

    The price of validity at every n: all 100,000 draws agreeing give 3.648 sigma, against
    Clopper-Pearson's 3.811 sigma at one fixed n.

    >>> round(anytime_radius(100_000, 100_000, 1.0, 0.001), 3)
    3.648
    """
    lower = float(lower_confidence_bound(S, n, alpha))
    return float(sigma * norm.ppf(lower)) if lower > 0.5 else 0.0


# ------------------------------------------------------------------------------------------------
# precomputed thresholds for one radius


@dataclass(frozen=True, eq=False)
class SequentialTest:
    """Thresholds of the test "p > p0" for n = 0..max_n, so each check is a table lookup.

    ``certify_min[n]`` = s_n, the least S that certifies at n (max_n + 1 when none does);
    ``abstain_max[n]`` = a_n, the largest S at which the mirror test abstains (-1 when none);
    ``reach[n]`` = min over m >= n of (s_m - m): S - n < reach[n + 1] means no later check can certify.

    >>> t = sequential_test(p0=0.5, alpha=0.05, max_n=100)
    >>> t.decide(10, 10), t.decide(10, 5), t.decide(10, 0)
    (1, 0, -1)
    """

    p0: float
    alpha: float
    abstain_alpha: float | None
    max_n: int
    certify_min: np.ndarray
    abstain_max: np.ndarray
    reach: np.ndarray
    mixture: str = "two-sided"

    def decide(self, n: int, S: int) -> int:
        """+1 certify, -1 abstain (mirror test or out of reach before max_n), 0 go on."""
        if S >= self.certify_min[n]:
            return 1
        if S <= self.abstain_max[n] or n >= self.max_n or S - n < self.reach[n + 1]:
            return -1
        return 0

    def operating_characteristics(self, p: float, step: int = 1, tol: float = 1e-15) -> tuple[float, float, float]:
        """Exact (P(certify), P(abstain or undecided at max_n), E[test samples]) at hit rate p.

        Dynamic programming over the law of S_n among the paths still running, checked every
        ``step`` samples and at max_n, exactly as the engine does: no simulation error. Once less
        than ``tol`` of the mass is still running it is booked as abstaining at max_n, so
        P(certify) is exact to within ``tol`` and E[samples] is an upper bound within tol * max_n.

        >>> t = sequential_test(p0=0.5, alpha=0.05, max_n=200)
        >>> pc, pa, mean_n = t.operating_characteristics(0.5)
        >>> pc <= 0.05 and abs(pc + pa - 1) < 1e-9
        True
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p!r}")
        if not (isinstance(step, int) and step >= 1):
            raise ValueError(f"step must be an int >= 1, got {step!r}")
        law, lo = np.ones(1), 0  # law[k] = P(S_n = lo + k, still running)
        certified = abstained = expected_n = 0.0
        for n in range(1, self.max_n + 1):
            nxt = np.zeros(law.size + 1)
            nxt[:-1] += law * (1.0 - p)
            nxt[1:] += law * p
            law = nxt
            if n % step and n != self.max_n:
                continue
            S = lo + np.arange(law.size)
            cert = S >= self.certify_min[n]
            stop = cert | (S <= self.abstain_max[n]) | (n >= self.max_n) | (S - n < self.reach[min(n + 1, self.max_n + 1)])
            certified += law[cert].sum()
            abstained += law[stop & ~cert].sum()
            expected_n += n * law[stop].sum()
            keep = np.flatnonzero(~stop)
            running = law[keep].sum() if keep.size else 0.0
            if running < tol:
                abstained += running
                expected_n += self.max_n * running
                break
            law, lo = law[keep[0]: keep[-1] + 1] * (~stop[keep[0]: keep[-1] + 1]), lo + keep[0]
        return float(certified), float(abstained), float(expected_n)


@lru_cache(maxsize=64)
def sequential_test(p0: float, alpha: float, max_n: int, abstain_alpha: float | None = None,
                    mixture: str = "two-sided") -> SequentialTest:
    """Build (and cache) the thresholds of the betting test of "hit rate > p0" up to max_n draws.

    ``abstain_alpha`` (default: alpha) sets the mirror test; it trades samples on hopeless images
    against the chance of abstaining on an image whose rate is above p0. It cannot cause a wrong
    certificate. ``mixture``: "two-sided" (REFERENCE's statistic) or "one-sided" (the prior on the
    alternative only; fewer samples, same guarantee; module docstring).

    >>> t = sequential_test(p0=0.99, alpha=0.001, max_n=10_000)
    >>> int(t.certify_min[t.certify_min <= np.arange(10_001)].size > 0)   # some n can certify
    1
    """
    _check_alpha(alpha)
    if not 0.0 < p0 < 1.0:
        raise ValueError(f"p0 must lie in (0, 1) (p0 = Phi(radius / sigma)), got {p0!r}")
    if not (isinstance(max_n, (int, np.integer)) and max_n >= 1):
        raise ValueError(f"max_n must be an int >= 1, got {max_n!r}")
    abstain_alpha = alpha if abstain_alpha is None else abstain_alpha
    _check_alpha(abstain_alpha)
    if mixture not in MIXTURES:
        raise ValueError(f"mixture must be one of {MIXTURES}, got {mixture!r}")
    max_n = int(max_n)
    n = np.arange(max_n + 1, dtype=np.int64)
    if mixture == "two-sided":
        above = below = lambda S: log_martingale(S, n, p0)
    else:
        above = lambda S: log_martingale_one_sided(S, n, p0, "above")
        below = lambda S: log_martingale_one_sided(S, n, p0, "below")

    # s_n: least S in [ceil(p0 n), n] with log M >= ln(1/alpha); an upper set (module docstring)
    lo, hi = np.ceil(p0 * n).astype(np.int64), n + 1  # hi = n + 1 stands for "none"
    target = math.log(1.0 / alpha)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = (lo < hi) & (above(np.minimum(mid, n)) >= target) & (mid <= n)
        hi = np.where(ok, mid, hi)
        lo = np.where(ok | (lo >= hi), lo, mid + 1)
    certify_min = np.where(lo <= n, lo, max_n + 1)
    certify_min[0] = max_n + 1

    # a_n: largest S in [0, floor(p0 n)] with log M >= ln(1/abstain_alpha); a lower set, same facts
    target = math.log(1.0 / abstain_alpha)
    lo, hi = np.full(max_n + 1, -1, dtype=np.int64), np.floor(p0 * n).astype(np.int64)
    while np.any(lo < hi):
        mid = (lo + hi + 1) // 2
        ok = (lo < hi) & (below(np.maximum(mid, 0)) >= target)
        lo = np.where(ok, mid, lo)
        hi = np.where(ok | (lo >= hi), hi, mid - 1)
    abstain_max = lo
    abstain_max[0] = -1

    reach = np.empty(max_n + 2, dtype=np.int64)
    reach[-1] = np.iinfo(np.int64).max // 2
    reach[:-1] = np.minimum.accumulate((certify_min - n)[::-1])[::-1]
    return SequentialTest(float(p0), float(alpha), float(abstain_alpha), max_n,
                          certify_min, abstain_max, reach, mixture)


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
        self.nA += int(counts[self.cA])
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
    def __init__(self, *args, sigma: float, alpha: float, rtol: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sigma, self.alpha, self.rtol = sigma, alpha, rtol
        self.lower = 0.0

    def _radius(self, lower: float) -> float:
        return float(self.sigma * norm.ppf(lower)) if lower > 0.5 else 0.0

    def check(self) -> bool:
        # the running max of L_n is valid: {exists n: L_n > p} is the event Ville bounds
        self.lower = max(self.lower, float(lower_confidence_bound(self.nA, self.n, self.alpha)))
        if self.n >= self.max_n:
            return True
        # stopping rule: if the hit rate stayed at S/n, max_n draws would add < rtol * sigma
        projected = lower_confidence_bound(round(self.nA / self.n * self.max_n), self.max_n, self.alpha)
        return self._radius(float(projected)) - self._radius(self.lower) < self.rtol * self.sigma

    def result(self) -> Certificate:
        if self.lower <= 0.5:
            return Certificate(ABSTAIN, 0.0, self.lower, self.nA, self.n, self.n0)
        return Certificate(self.cA, self._radius(self.lower), self.lower, self.nA, self.n, self.n0)


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
        noise = torch.cat([torch.randn((size, *job.x.shape), generator=job.next_chunk()[0],
                                       device=job.x.device, dtype=torch.float32) for job, size in batch])
        images = torch.cat([job.x.expand(size, *job.x.shape) for job, size in batch])
        preds = smoothed.base_predict(images + noise * smoothed.sigma)
        owner = torch.repeat_interleave(torch.arange(len(batch), device=preds.device),
                                        torch.tensor([s for _, s in batch], device=preds.device))
        counts = torch.zeros(len(batch), smoothed.num_classes, dtype=torch.long, device=preds.device)
        counts.index_put_((owner, preds.long()), torch.ones_like(owner), accumulate=True)
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
    _check_alpha(alpha)
    Smoothed._check_counts(max_n=max_n, batch_size=batch_size, n0=n0)
    step = batch_size if step is None else step
    if not (isinstance(step, int) and 1 <= step <= batch_size):
        raise ValueError(f"step must be an int in [1, batch_size={batch_size}], got {step!r}")
    return step


def _indexed(smoothed: Smoothed, images: Iterable[torch.Tensor], indices: Iterable[int] | None):
    indices = indices if indices is not None else range(10**18)
    for index, x in zip(indices, images):
        yield index, smoothed._check_input(x)


def certify_at_many(smoothed: Smoothed, images: Iterable[torch.Tensor], radius: float | Sequence[float],
                    alpha: float, max_n: int, batch_size: int, seed: int = 0,
                    indices: Iterable[int] | None = None, n0: int = 100, step: int | None = None,
                    abstain_alpha: float | None = None, mixture: str = "two-sided") -> Iterator[GridCertificate]:
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
    tests = [sequential_test(float(norm.cdf(r / smoothed.sigma)), alpha, max_n, abstain_alpha, mixture)
             for r in radii]
    jobs = (_GridJob(smoothed, x, index, seed, n0, step, max_n, radii=radii, tests=tests)
            for index, x in _indexed(smoothed, images, indices))
    for job in _run(smoothed, jobs, batch_size):
        yield job.result()


def certify_at(smoothed: Smoothed, x: torch.Tensor, radius: float | Sequence[float], alpha: float,
               max_n: int, batch_size: int, seed: int = 0, index: int = 0, n0: int = 100,
               step: int | None = None, abstain_alpha: float | None = None,
               mixture: str = "two-sided") -> GridCertificate:
    """Is g certified at ``radius`` (or at each radius of a grid)? Stop as soon as all are decided.

    cA is Cohen's: the most frequent class among n0 draws of the "selection" stream. Then up to
    max_n fresh draws of the "sequential" stream, checked every ``step`` (default batch_size) draws.
    With probability >= 1 - alpha no radius of the grid is certified wrongly (one alpha for the whole
    grid: see the module docstring). ``mixture="one-sided"`` decides with fewer samples.

    >>> from torch import nn
    >>> g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=0.5, num_classes=2)
    >>> c = certify_at(g, torch.full((1, 2, 2), 0.5), [0.25, 0.5], alpha=0.001, max_n=1000, batch_size=100)
    >>> c.radii, c.n <= 1000
    ((0.25, 0.5), True)
    """
    return next(certify_at_many(smoothed, [x], radius, alpha, max_n, batch_size, seed, [index], n0, step,
                                abstain_alpha, mixture))


def certify_anytime_many(smoothed: Smoothed, images: Iterable[torch.Tensor], alpha: float, max_n: int,
                         batch_size: int, seed: int = 0, indices: Iterable[int] | None = None,
                         n0: int = 100, step: int | None = None, rtol: float = 0.05) -> Iterator[Certificate]:
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
    jobs = (_AnytimeJob(smoothed, x, index, seed, n0, step, max_n, sigma=smoothed.sigma, alpha=alpha,
                        rtol=float(rtol)) for index, x in _indexed(smoothed, images, indices))
    for job in _run(smoothed, jobs, batch_size):
        yield job.result()


def certify_anytime(smoothed: Smoothed, x: torch.Tensor, alpha: float, max_n: int, batch_size: int,
                    seed: int = 0, index: int = 0, n0: int = 100, step: int | None = None,
                    rtol: float = 0.05) -> Certificate:
    """(cA, radius) from the confidence sequence, valid at whatever n the sampling stopped.

    After each chunk: L = the running max of L_n, radius = sigma PhiInv(L) (abstain when L <= 1/2).
    Stopping rule: stop at max_n, or once the projected gain is small: if the hit rate stayed at
    S/n, the bound at max_n would raise the radius by less than ``rtol * sigma``. The rule only
    spends or saves samples; the radius is valid at any stopping time.

    >>> from torch import nn
    >>> g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=0.5, num_classes=2)
    >>> c = certify_anytime(g, torch.full((1, 2, 2), 0.5), alpha=0.001, max_n=1000, batch_size=100)
    >>> c.n <= 1000 and c.radius >= 0
    True
    """
    return next(certify_anytime_many(smoothed, [x], alpha, max_n, batch_size, seed, [index], n0, step, rtol))


__all__ = [
    "GridCertificate", "SequentialTest", "anytime_radius", "certify_anytime", "certify_anytime_many",
    "certify_at", "certify_at_many", "log_martingale", "log_martingale_one_sided", "lower_confidence_bound",
    "sequential_test",
    "upper_confidence_bound",
]
