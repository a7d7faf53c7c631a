"""The test at one radius, read on a schedule of checks: certify, abstain or go on (a group-sequential test).

The statistic is the betting martingale of `certify.betting`, two-sided or one-sided (``mixture``).
The tests are read after n_1 < n_2 < ... < n_K = max_n test samples (:func:`check_schedule`); at
check k the test of "p > p0" certifies when S >= s_k, the least S whose statistic reaches c_k.
Two boundaries (``boundary``):

- "ville": c_k = ln(1/alpha) at every check. By Ville's inequality the statistic ever reaches it with
  probability <= alpha under the null, so the test is valid at any stopping time, on any schedule.
- "exact" (the CLI's default): schedule and max_n are fixed before the first draw, so the probability
  of a crossing at p0, P_p0(exists k: S_{n_k} >= s_k), can be computed exactly (dynamic programming over
  the law of S, :func:`crossing_probability`). On a schedule Ville's bound is loose (the one-sided test
  of p0 = Phi(1), max_n 100,000, a check every 100 samples, crosses with probability 0.23 alpha). The
  exact boundary keeps c_k = ln(1/alpha) at the early checks (n_k < EXACT_FROM max_n, where easy images
  stop) and gives the alpha that Ville leaves unspent to the later ones: one lower c for all of them,
  the least whose exact crossing probability at p0 is <= alpha. Images whose rate sits near a threshold,
  which cost the most, then decide 10-20% sooner (`benchmarks/futility_cost.py` has the exact figures).

Why "exact" is valid. Each region {S >= s_k} is an upper set, so drawing the hits of rates p <= p0 from
one uniform per sample (a hit at p is a hit at p0) shows P_p(crossing) <= P_p0(crossing) <= alpha for
every p in the null. The DP drops entries below 1e-18 and adds their mass to the crossing probability,
so the value it compares with alpha is an upper bound (and alpha gets a relative margin of 1e-9 for
rounding). Abstaining (the mirror test, the futility rule, out of reach) only removes paths, and the
grid's prefix rule (`certify.betting`) needs nothing but each radius's crossing probability <= alpha
under its null, so both carry over. The tests are only ever read at the checks: the tables make sure
of it (no certificate between checks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.signal import convolve
from scipy.stats import binom

from .betting import MIXTURES, log_martingale, log_martingale_one_sided
from .stats import check_alpha

BOUNDARIES = ("exact", "ville")
#: the exact boundary keeps Ville's threshold at checks before this fraction of max_n. Exact figures at
#: max_n 100,000, r/sigma = 0.5, 1, 2, one-sided, the CLI's schedule: from 1% or 0.3% on, the thresholds
#: spend alpha early (all-hit images stop 10 samples sooner at r = 2 sigma) and images that need 15,000-20,000
#: samples need 4-15% more; from 10%, images that need 4,000 need 7-28% more.
EXACT_FROM = 0.03
_DROP = 1e-18


def check_schedule(max_n: int, step: int, growth: float = 0.0, max_step: int | None = None) -> tuple[int, ...]:
    """The test sample counts at which the tests are read, ending at max_n.

    Every ``step`` samples; with ``growth`` > 0 every max(step, growth n) samples rounded down to a
    multiple of step, at most ``max_step``: early checks are close together (an easy image stops after
    a few hundred samples), later ones cost little in overshoot (2% at growth 0.02).

    >>> check_schedule(100, 25)
    (25, 50, 75, 100)
    >>> s = check_schedule(100_000, 10, growth=0.02, max_step=1000)
    >>> s[:3], s[-2:], len(s)
    ((10, 20, 30), (99560, 100000), 361)
    """
    if not (isinstance(max_n, (int, np.integer)) and max_n >= 1):
        raise ValueError(f"max_n must be an int >= 1, got {max_n!r}")
    if not (isinstance(step, (int, np.integer)) and step >= 1):
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    if not (isinstance(growth, (int, float)) and math.isfinite(growth) and growth >= 0):
        raise ValueError(f"growth must be a finite number >= 0 (0: a check every step samples), got {growth!r}")
    if max_step is not None and not (isinstance(max_step, (int, np.integer)) and max_step >= step):
        raise ValueError(f"max_step must be an int >= step = {step}, got {max_step!r}")
    cap = max_n if max_step is None else int(max_step)
    checks, n = [], 0
    while n < max_n:
        n = min(max_n, n + min(cap, max(step, step * int(min(growth * n, max_n) / step))))
        checks.append(n)
    return tuple(checks)


def _statistics(p0: float, mixture: str):
    """(above, below): the statistics of "p > p0" and of the mirror "p < p0", as functions of (S, n)."""
    if mixture == "two-sided":
        return (lambda S, n: log_martingale(S, n, p0)), (lambda S, n: log_martingale(S, n, p0))
    return (lambda S, n: log_martingale_one_sided(S, n, p0, "above"),
            lambda S, n: log_martingale_one_sided(S, n, p0, "below"))


def _least_reaching(stat, n: np.ndarray, lo: np.ndarray, target) -> np.ndarray:
    """The least S in [lo, n] with stat(S, n) >= target, n + 1 when none (stat grows with S)."""
    hi = n + 1
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = (lo < hi) & (mid <= n) & (stat(np.minimum(mid, n), n) >= target)
        hi = np.where(ok, mid, hi)
        lo = np.where(ok | (lo >= hi), lo, mid + 1)
    return lo


def _largest_reaching(stat, p: float, n: np.ndarray, level: float) -> np.ndarray:
    """The largest S in [0, floor(p n)] with stat(S, n) >= ln(1/level), -1 when none (a lower set)."""
    target = math.log(1.0 / level)
    lo, hi = np.full(n.size, -1, dtype=np.int64), np.floor(p * n).astype(np.int64)
    while np.any(lo < hi):
        mid = (lo + hi + 1) // 2
        ok = (lo < hi) & (stat(np.maximum(mid, 0), n) >= target)
        lo = np.where(ok, mid, lo)
        hi = np.where(ok | (lo >= hi), hi, mid - 1)
    return lo


def _walk(p: float, checks: np.ndarray, certify_at: np.ndarray, stop_at: np.ndarray) -> tuple[float, ...]:
    """Exact law of the test's end at hit rate p: (P(certify), P(other stop), E[n], mass dropped).

    ``certify_at[k]`` = s_k, ``stop_at[k]`` = the largest S that stops at check k without certifying
    (-1: none); every path stops at the last check. Entries below 1e-18 are dropped (booked at max_n).
    """
    law, lo, prev = np.ones(1), 0, 0
    certified = stopped = expected = dropped = 0.0
    kernels: dict[int, np.ndarray] = {}
    for k, n in enumerate(checks):
        d, prev = int(n) - prev, int(n)
        if d not in kernels:
            kernels[d] = binom.pmf(np.arange(d + 1), d, p)
        law = np.maximum(convolve(law, kernels[d]), 0.0)  # FFT when large: clip its rounding below 0
        S = lo + np.arange(law.size)
        cert = S >= certify_at[k]
        stop = ~cert & ((S <= stop_at[k]) | (k == len(checks) - 1))
        tiny = ~cert & ~stop & (law < _DROP)
        masses = law[cert].sum(), law[stop].sum(), law[tiny].sum()
        certified, stopped, dropped = certified + masses[0], stopped + masses[1], dropped + masses[2]
        expected += n * (masses[0] + masses[1]) + checks[-1] * masses[2]
        keep = np.flatnonzero(~(cert | stop | tiny))
        if keep.size == 0:
            break
        law = np.where(cert | stop | tiny, 0.0, law)[keep[0]: keep[-1] + 1]
        lo += int(keep[0])
    return float(certified), float(stopped), float(expected), float(dropped)


def _out_of_reach(checks: np.ndarray, certify_at: np.ndarray) -> np.ndarray:
    """The largest S at check k from which no later check can certify (hits add at most one per draw)."""
    later = np.minimum.accumulate((certify_at - checks)[::-1])[::-1]  # min over m >= k of s_m - n_m
    return checks + np.append(later[1:], np.iinfo(np.int64).max // 4) - 1


def crossing_probability(p: float, checks: Sequence[int], certify_at: Sequence[int]) -> float:
    """An upper bound, exact to 1e-12, on P_p(exists k: S_{n_k} >= s_k): the chance the test ever certifies.

    >>> round(crossing_probability(0.5, [10], [10]), 6)   # ten hits in ten draws
    0.000977
    """
    checks, certify_at = np.asarray(checks, dtype=np.int64), np.asarray(certify_at, dtype=np.int64)
    certified, _, _, dropped = _walk(p, checks, certify_at, _out_of_reach(checks, certify_at))
    return certified + dropped


@dataclass(frozen=True, eq=False)
class SequentialTest:
    """Tables of the test "p > p0" for n = 0..max_n, so each check is a lookup (read only at ``checks``).

    ``certify_min[n]`` = s_n, the least S that certifies at n (max_n + 1 when none does, and between checks);
    ``abstain_max[n]`` = a_n, the largest S at which the mirror test (or the futility rule) abstains (-1 when none);
    ``reach[n]`` = min over m >= n of (s_m - m): S - n < reach[n + 1] means no later check can certify.
    ``late_threshold``: c at the checks from EXACT_FROM max_n on (ln(1/alpha) for the Ville boundary).

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
    futility: float | None = None
    checks: np.ndarray | None = None
    boundary: str = "ville"
    late_threshold: float = math.nan

    def decide(self, n: int, S):
        """+1 certify, -1 abstain (mirror test, futility, or out of reach before max_n), 0 go on.

        ``S`` an int (gives an int) or an array of hit counts, one per class (gives an array).
        """
        stop = (S <= self.abstain_max[n]) | (n >= self.max_n) | (S - n < self.reach[n + 1])
        out = np.where(S >= self.certify_min[n], 1, np.where(stop, -1, 0))
        return int(out) if out.ndim == 0 else out

    @property
    def needed_rate(self) -> float:
        """q = s_max_n / max_n: the hit rate the test needs at the end of its budget (1.0 when it cannot certify)."""
        return min(1.0, float(self.certify_min[self.max_n]) / self.max_n)

    def operating_characteristics(self, p: float) -> tuple[float, float, float]:
        """Exact (P(certify), P(abstain or undecided at max_n), E[test samples]) at hit rate p.

        Dynamic programming over the law of S_n among the paths still running, read at the test's
        checks exactly as the engine reads it: no simulation error (entries below 1e-18 are booked as
        abstaining at max_n).

        >>> t = sequential_test(p0=0.5, alpha=0.05, max_n=200)
        >>> pc, pa, mean_n = t.operating_characteristics(0.5)
        >>> pc <= 0.05 and abs(pc + pa - 1) < 1e-9
        True
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p!r}")
        k = self.checks
        stop_at = np.maximum(self.abstain_max[k], k + self.reach[k + 1] - 1)
        certified, stopped, expected, dropped = _walk(p, k, self.certify_min[k], stop_at)
        return certified, stopped + dropped, expected


def _checks(checks, max_n: int) -> np.ndarray:
    if checks is None:
        return np.arange(1, max_n + 1, dtype=np.int64)
    out = np.asarray(checks, dtype=np.int64)
    if out.ndim != 1 or out.size == 0 or out[-1] != max_n or out[0] < 1 or np.any(np.diff(out) <= 0):
        raise ValueError(f"checks must be increasing sample counts >= 1 ending at max_n = {max_n}, got {checks!r}")
    return out


def sequential_test(p0: float, alpha: float, max_n: int, abstain_alpha: float | None = None,
                    mixture: str = "two-sided", futility: float | None = None,
                    checks: Sequence[int] | None = None, boundary: str = "ville") -> SequentialTest:
    """Build (and cache) the tables of the betting test of "hit rate > p0", read at ``checks``.

    ``checks`` (default: after every sample) as :func:`check_schedule` gives them. ``boundary``: "ville"
    or "exact" (module docstring; needs the real schedule, it is calibrated on it). ``abstain_alpha``
    (default: alpha) sets the mirror test; it trades samples on hopeless images against the chance of
    abstaining on an image whose rate is above p0. ``mixture``: "two-sided" (REFERENCE's statistic) or
    "one-sided" (the prior on the alternative only; fewer samples, same guarantee; `certify.betting`).
    ``futility`` (gamma, off when None): the mirror test once more, of "rate >= q" at level gamma with the
    one-sided prior below q, where q = s_max_n / max_n is the rate the test needs by the end of its budget
    (`SequentialTest.needed_rate`). Aimed at the budget, it stops images whose rate sits just below a
    threshold long before max_n. It can only abstain, so validity is untouched; and by Ville's
    inequality it fires with probability <= gamma on any image whose rate is >= q, so it costs at most
    gamma of certification probability there (`SequentialTest.operating_characteristics` computes the
    exact cost at any rate). None of the abstaining rules enters the exact boundary's calibration.

    >>> t = sequential_test(p0=0.99, alpha=0.001, max_n=10_000)
    >>> int(t.certify_min[t.certify_min <= np.arange(10_001)].size > 0)   # some n can certify
    1
    """
    if checks is not None:
        checks = tuple(checks)
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in checks):
            raise ValueError(f"checks must be whole sample counts, got {checks!r}")
        checks = tuple(int(n) for n in checks)
    return _sequential_test(p0, alpha, max_n, abstain_alpha, mixture, futility, checks, boundary)


@lru_cache(maxsize=64)
def _sequential_test(p0, alpha, max_n, abstain_alpha, mixture, futility, checks, boundary) -> SequentialTest:
    check_alpha(alpha)
    if not 0.0 < p0 < 1.0:
        raise ValueError(f"p0 must lie in (0, 1) (p0 = Phi(radius / sigma)), got {p0!r}")
    if not (isinstance(max_n, (int, np.integer)) and max_n >= 1):
        raise ValueError(f"max_n must be an int >= 1, got {max_n!r}")
    abstain_alpha = alpha if abstain_alpha is None else abstain_alpha
    check_alpha(abstain_alpha)
    if mixture not in MIXTURES:
        raise ValueError(f"mixture must be one of {MIXTURES}, got {mixture!r}")
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    max_n = int(max_n)
    k = _checks(checks, max_n)
    above, below = _statistics(p0, mixture)
    floor = np.ceil(p0 * k).astype(np.int64)  # both mixtures certify only above p0 n (betting docstring)
    ville = math.log(1.0 / alpha)
    s = _least_reaching(above, k, floor, ville)
    late_threshold = ville
    if boundary == "exact":
        late = k >= EXACT_FROM * max_n
        late_threshold, s = _calibrate(lambda c: _least_reaching(above, k, floor, np.where(late, c, ville)),
                                       p0, alpha, k, ville, s)

    certify_min = np.full(max_n + 1, max_n + 1, dtype=np.int64)
    certify_min[k] = np.where(s <= k, s, max_n + 1)
    abstain_max = np.full(max_n + 1, -1, dtype=np.int64)
    abstain_max[k] = _largest_reaching(below, p0, k, abstain_alpha)
    if futility is not None:  # the mirror test again, at the rate the budget needs: both only ever abstain
        check_alpha(futility)
        q = float(certify_min[max_n]) / max_n
        if q < 1.0:
            futile = _largest_reaching(lambda S, n: log_martingale_one_sided(S, n, q, "below"), q, k, futility)
            abstain_max[k] = np.maximum(abstain_max[k], np.minimum(futile, certify_min[k] - 1))

    n = np.arange(max_n + 1, dtype=np.int64)
    reach = np.empty(max_n + 2, dtype=np.int64)
    reach[-1] = np.iinfo(np.int64).max // 2
    reach[:-1] = np.minimum.accumulate((certify_min - n)[::-1])[::-1]
    return SequentialTest(float(p0), float(alpha), float(abstain_alpha), max_n, certify_min, abstain_max, reach,
                          mixture, futility, k, boundary, float(late_threshold))


def _calibrate(thresholds, p0: float, alpha: float, checks: np.ndarray, ville: float,
               s_ville: np.ndarray) -> tuple[float, np.ndarray]:
    """The least late threshold c in [0, ln(1/alpha)] whose exact crossing probability at p0 is <= alpha.

    Bisection: lowering c lowers every s_k, so the crossing probability only grows. At c = ln(1/alpha)
    the test is Ville's, valid whatever the DP says; the search stops once the tables stop changing.
    """
    budget = alpha * (1 - 1e-9)
    lo, hi, s_lo, s_hi = 0.0, ville, thresholds(0.0), s_ville
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        s = thresholds(mid)
        if np.array_equal(s, s_hi) or crossing_probability(p0, checks, s) <= budget:
            hi, s_hi = mid, s
        else:
            lo, s_lo = mid, s
        if np.array_equal(s_lo, s_hi):
            break
    return hi, s_hi


__all__ = ["BOUNDARIES", "EXACT_FROM", "SequentialTest", "check_schedule", "crossing_probability", "sequential_test"]
