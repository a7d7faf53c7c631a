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
  with `certify.boundary.SequentialTest.operating_characteristics`). Every ratio grows with S, so the region is
  again an upper set; and M+ < 1 when S < p0 n (each ratio is), so s_n >= p0 n as before.
`certify.boundary` turns a statistic into tables of s_n read at a schedule of checks (one lookup per
check), and may lower the threshold where Ville's bound is loose on that schedule (its "exact" boundary).

A grid of radii shares one alpha. Claims form a prefix of the ascending grid: r_i is certified only if
the tests of r_1..r_i have all crossed (each at some time before the stop). If any claim is wrong, let
i* be the smallest i with p0(r_i) > p_true; the claims, being a prefix that reaches past i*, include
r_i*, so the test at r_i*, whose null holds, crossed: one event of probability <= alpha (Ville's, or the
exact boundary's computed one), whatever the
grid, the order of decisions or the stopping rule. No union bound is needed. (With the two-sided
mixture the thresholds are nested across radii and the prefix rule never changes a decision.)

The certificate. cA comes from n0 samples of an independent stream ("selection", as in Cohen; drawn only
until the argmax can no longer change, `certify.selection`);
given cA the test samples are i.i.d. Bernoulli(p_cA). If p_cA >= Phi(r/sigma) > 1/2, g is constant
(= cA) on the L2 ball of radius r (Cohen et al. 2019, Theorem 1), so a wrong certificate at r needs
p_cA < p0(r): probability <= alpha as above. Without selection draws (selection "all") every class is
tested on the same samples, and the union over the classes is paid for exactly (`certify.selection`).

Early abstain (power only, never validity): the mirror test rejects p >= p0 when S <= p0 n and
log M_n(p0) >= ln(1/abstain_alpha) (one-sided: the prior on q < p0), a lower set {S <= a_n}; and
the test gives up when even all remaining samples hitting could not reach s_m for any m <= max_n.

The sampling that feeds these tests (several images packed into one batch) is `certify.sequential`.
"""

from __future__ import annotations

import math

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
