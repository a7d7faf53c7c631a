"""Oracles and references for the statistical tests, written from the papers' definitions.

Nothing here calls the code it checks (`certify.stats`, `certify.betting`, `certify.boundary`,
`certify.selection`, `certify.sequential`): the tests compare that code with these.

- `Bands`: a classifier whose smoothed class probabilities, and the true robust radius of g, are exact.
- `Scripted`: a classifier that answers given labels in order, so a count vector becomes an exact outcome
  of the engine (enumerate the outcomes, weight each by its probability: an exact error rate).
- Clopper-Pearson, Theorem 1's radius (and the top class with it), the betting confidence sequence and the
  probability that a binomial walk crosses a boundary, each from its definition.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import betaln, xlog1py, xlogy
from scipy.stats import beta, binom, multinomial, norm
from torch import nn


class Bands(nn.Module):
    """f(x) = the number of ``cuts`` at or below z = w.x (w a unit vector): classes 0..len(cuts) in bands.

    Under N(0, sigma^2 I) noise z ~ N(w.x, sigma^2), so each class probability is exact, and g depends on
    x only through mu = w.x: its robust radius is the distance from mu to the nearest mu' where g changes.
    """

    def __init__(self, cuts, w: torch.Tensor) -> None:
        super().__init__()
        self.cuts = torch.tensor(sorted(cuts), dtype=torch.float64)
        self.w = (w / w.norm()).flatten().double()
        self.num_classes = len(cuts) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.flatten(1).double() @ self.w)[:, None] >= self.cuts).sum(dim=1)  # the cuts at or below z

    def mu(self, x: torch.Tensor) -> float:
        return float(x.flatten().double() @ self.w)

    def probabilities(self, mu, sigma: float) -> np.ndarray:
        """P(f(x + d) = c) for each class c (last axis), at w.x = mu (a number or an array)."""
        edges = np.concatenate([[-np.inf], self.cuts.numpy(), [np.inf]])
        return np.diff(norm.cdf((edges - np.asarray(mu, dtype=float)[..., None]) / sigma), axis=-1)

    def robust_radius(self, mu: float, sigma: float) -> float:
        """The distance from mu to the nearest mu' where argmax_c P_c(mu') is another class (scan, then Brent)."""
        top = int(np.argmax(self.probabilities(mu, sigma)))
        best = math.inf
        for direction in (-1.0, 1.0):
            steps = np.linspace(0.0, 20 * sigma, 40_001)
            winners = np.argmax(self.probabilities(mu + direction * steps, sigma), axis=1)
            if np.all(winners == top):
                continue
            i = int(np.argmax(winners != top))
            gap = lambda t: np.diff(self.probabilities(mu + direction * t, sigma)[[winners[i], top]])[0]  # noqa: E731
            best = min(best, brentq(gap, steps[i - 1], steps[i], xtol=1e-14))
        return best


class Scripted(nn.Module):
    """Hard labels from ``labels`` in order, whatever the images: the engine counts exactly these."""

    def __init__(self, labels, num_classes: int) -> None:
        super().__init__()
        self.labels, self.at, self.num_classes = torch.as_tensor(labels, dtype=torch.long), 0, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.labels[self.at:self.at + len(x)]
        self.at += len(x)
        assert len(out) == len(x), "the script ran out of labels"
        return out


def outcomes(n: int, p) -> list[tuple[tuple[int, ...], float]]:
    """Every count vector of n draws over len(p) classes, with its multinomial probability."""
    K = len(p)
    counts = [c + (n - sum(c),) for c in product(range(n + 1), repeat=K - 1) if sum(c) <= n]
    return list(zip(counts, multinomial.pmf(counts, n, p)))


# ------------------------------------------------------------------------------------------------
# Clopper-Pearson and Theorem 1 (Cohen et al. 2019), from the definitions


def cp_lower(k: int, n: int, level: float) -> float:
    """The one-sided (1 - level) Clopper-Pearson lower bound: the p at which P_p(X >= k) = level (0 if k = 0)."""
    return 0.0 if k == 0 else brentq(lambda q: binom.sf(k - 1, n, q) - level, 0.0, 1.0, xtol=1e-15)


def cp_upper(k: int, n: int, level: float) -> float:
    """The one-sided (1 - level) Clopper-Pearson upper bound: the p at which P_p(X <= k) = level (1 if k = n)."""
    return 1.0 if k == n else brentq(lambda q: binom.cdf(k, n, q) - level, 0.0, 1.0, xtol=1e-15)


def theorem1_radius(sigma: float, pA: float, pB: float) -> float:
    """g is constant within sigma / 2 (PhiInv(pA) - PhiInv(pB)) when pA > pB (Cohen et al., Theorem 1)."""
    return sigma / 2 * (norm.ppf(pA) - norm.ppf(pB)) if pA > pB else 0.0


def theorem1_top(p, sigma: float) -> tuple[int, float]:
    """The top class of the exact class probabilities ``p`` and Theorem 1's radius with the runner-up there."""
    order = np.argsort(p)[::-1]
    return int(order[0]), theorem1_radius(sigma, float(p[order[0]]), float(p[order[1]]))


# ------------------------------------------------------------------------------------------------
# The betting confidence sequence (Voracek 2024), from its definition


def log_mixture(S, n, p):
    """log of the Beta(1/2, 1/2) mixture of likelihood ratios q^S (1-q)^(n-S) / (p^S (1-p)^(n-S))."""
    S, n = np.asarray(S, dtype=float), np.asarray(n, dtype=float)
    return betaln(S + 0.5, n - S + 0.5) - betaln(0.5, 0.5) - xlogy(S, p) - xlog1py(n - S, -p)


def log_mixture_one_sided(S, n, p, side: str):
    """The same mixture with the prior restricted to q > p ("above") or q < p ("below"), renormalized."""
    S, n = np.asarray(S, dtype=float), np.asarray(n, dtype=float)
    tail = beta.logsf if side == "above" else beta.logcdf
    with np.errstate(divide="ignore"):
        return log_mixture(S, n, p) + tail(p, S + 0.5, n - S + 0.5) - tail(p, 0.5, 0.5)


def cs_lower(S: int, n: int, level: float) -> float:
    """L_n: the root in (0, S/n) of log_mixture(S, n, p) = ln(1/level); every p below it is rejected."""
    if S == 0:
        return 0.0
    return brentq(lambda p: log_mixture(S, n, p) - math.log(1 / level), 1e-300, S / n, xtol=1e-15)


def cs_upper(S: int, n: int, level: float) -> float:
    """U_n: L_n of the misses, mirrored."""
    return 1.0 - cs_lower(n - S, n, level)


# ------------------------------------------------------------------------------------------------
# A binomial walk read at checks: the exact probability of a crossing


def first_passage(p: float, checks, certify_at, stop_at=None, mirrored: bool = False) -> float:
    """P_p(S_{n_k} >= certify_at[k] at some check k, before any check with S <= stop_at[k]), exactly.

    S_n counts the hits among n i.i.d. Bernoulli(p) draws; the law of S over the paths still running is
    carried from check to check (no entry dropped). ``mirrored``: the misses n - S cross the same
    thresholds too (two classes tested on the same samples).
    """
    law, prev, crossed = np.ones(1), 0, 0.0
    for k, n in enumerate(int(n) for n in checks):
        law = np.convolve(law, binom.pmf(np.arange(n - prev + 1), n - prev, p))
        prev = n
        S = np.arange(n + 1)
        hit = (S >= certify_at[k]) | (mirrored & (n - S >= certify_at[k]))
        crossed += law[hit].sum()
        law[hit] = 0.0
        if stop_at is not None:
            law[S <= stop_at[k]] = 0.0
    return float(crossed)
