"""The statistics of anytime-valid certification: a betting test that may stop at any time (Voracek, NeurIPS 2024).

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

The sampling that feeds these tests (several images packed into one batch) is `certify.sequential`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import betaln, xlog1py, xlogy
from scipy.stats import beta

from .stats import check_alpha, radius_from_p

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
    check_alpha(alpha)
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
    return radius_from_p(sigma, lower)


# ------------------------------------------------------------------------------------------------
# precomputed thresholds for one radius


@dataclass(frozen=True, eq=False)
class SequentialTest:
    """Thresholds of the test "p > p0" for n = 0..max_n, so each check is a table lookup.

    ``certify_min[n]`` = s_n, the least S that certifies at n (max_n + 1 when none does);
    ``abstain_max[n]`` = a_n, the largest S at which the mirror test (or the futility rule) abstains (-1 when none);
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
    futility: float | None = None

    def decide(self, n: int, S: int) -> int:
        """+1 certify, -1 abstain (mirror test, futility, or out of reach before max_n), 0 go on."""
        if S >= self.certify_min[n]:
            return 1
        if S <= self.abstain_max[n] or n >= self.max_n or S - n < self.reach[n + 1]:
            return -1
        return 0

    @property
    def needed_rate(self) -> float:
        """q = s_max_n / max_n: the hit rate the test needs at the end of its budget (1.0 when it cannot certify)."""
        return min(1.0, float(self.certify_min[self.max_n]) / self.max_n)

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
            stop = cert | (S <= self.abstain_max[n]) | (n >= self.max_n) | (S - n < self.reach[n + 1])
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


def _mirror_threshold(below, p: float, n: np.ndarray, level: float) -> np.ndarray:
    """a_n: the largest S in [0, floor(p n)] with log M_n >= ln(1/level) (-1 when none); a lower set."""
    target = math.log(1.0 / level)
    lo, hi = np.full(n.size, -1, dtype=np.int64), np.floor(p * n).astype(np.int64)
    while np.any(lo < hi):
        mid = (lo + hi + 1) // 2
        ok = (lo < hi) & (below(np.maximum(mid, 0)) >= target)
        lo = np.where(ok, mid, lo)
        hi = np.where(ok | (lo >= hi), hi, mid - 1)
    lo[0] = -1
    return lo


@lru_cache(maxsize=64)
def sequential_test(p0: float, alpha: float, max_n: int, abstain_alpha: float | None = None,
                    mixture: str = "two-sided", futility: float | None = None) -> SequentialTest:
    """Build (and cache) the thresholds of the betting test of "hit rate > p0" up to max_n draws.

    ``abstain_alpha`` (default: alpha) sets the mirror test; it trades samples on hopeless images
    against the chance of abstaining on an image whose rate is above p0. It cannot cause a wrong
    certificate. ``mixture``: "two-sided" (REFERENCE's statistic) or "one-sided" (the prior on the
    alternative only; fewer samples, same guarantee; module docstring). ``futility`` (gamma, off
    when None): the mirror test once more, of "rate >= q" at level gamma with the one-sided prior below
    q, where q = s_max_n / max_n is the rate the test needs by the end of its budget
    (`SequentialTest.needed_rate`). Aimed at the budget, it stops images whose rate sits just below a
    threshold long before max_n. It can only abstain, so validity is untouched; and by Ville's
    inequality it fires with probability <= gamma on any image whose rate is >= q, so it costs at most
    gamma of certification probability there (`SequentialTest.operating_characteristics` computes the
    exact cost at any rate).

    >>> t = sequential_test(p0=0.99, alpha=0.001, max_n=10_000)
    >>> int(t.certify_min[t.certify_min <= np.arange(10_001)].size > 0)   # some n can certify
    1
    """
    check_alpha(alpha)
    if not 0.0 < p0 < 1.0:
        raise ValueError(f"p0 must lie in (0, 1) (p0 = Phi(radius / sigma)), got {p0!r}")
    if not (isinstance(max_n, (int, np.integer)) and max_n >= 1):
        raise ValueError(f"max_n must be an int >= 1, got {max_n!r}")
    abstain_alpha = alpha if abstain_alpha is None else abstain_alpha
    check_alpha(abstain_alpha)
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

    abstain_max = _mirror_threshold(below, p0, n, abstain_alpha)
    if futility is not None:  # the mirror test again, at the rate the budget needs: both only ever abstain
        check_alpha(futility)
        q = float(certify_min[max_n]) / max_n
        if q < 1.0:
            futile = _mirror_threshold(lambda S: log_martingale_one_sided(S, n, q, "below"), q, n, futility)
            abstain_max = np.maximum(abstain_max, np.minimum(futile, certify_min - 1))

    reach = np.empty(max_n + 2, dtype=np.int64)
    reach[-1] = np.iinfo(np.int64).max // 2
    reach[:-1] = np.minimum.accumulate((certify_min - n)[::-1])[::-1]
    return SequentialTest(float(p0), float(alpha), float(abstain_alpha), max_n,
                          certify_min, abstain_max, reach, mixture, futility)
