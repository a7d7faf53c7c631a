"""certify/betting.py: the betting confidence sequence (Voracek 2024) against independent computations: its
lower bound is the root below the rate, the one-sided statistic is the restricted mixture integrated
numerically, and the cost of anytime validity at n = 100,000 is REFERENCE section 4's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import betaln

from certify.betting import anytime_radius, log_martingale, log_martingale_one_sided, lower_confidence_bound
from certify.stats import max_radius


def _independent_lower_bound(S: int, n: int, alpha: float) -> float:
    f = lambda p: (betaln(S + 0.5, n - S + 0.5) - betaln(0.5, 0.5) - S * math.log(p)  # noqa: E731
                   - ((n - S) * math.log1p(-p) if S < n else 0.0) - math.log(1 / alpha))
    return brentq(f, 1e-300, S / n, xtol=1e-15, rtol=1e-15)


def test_cost_of_anytime_validity_matches_reference():
    assert anytime_radius(100_000, 100_000, 1.0, 0.001) == pytest.approx(3.648, abs=5e-4)
    assert max_radius(1.0, 100_000, 0.001) == pytest.approx(3.811, abs=5e-4)
    assert anytime_radius(100_000, 100_000, 0.5, 0.001) == pytest.approx(0.5 * 3.648, abs=5e-4)


@pytest.mark.parametrize("S,n,alpha", [(1, 1, 0.05), (90, 100, 0.001), (9_950, 10_000, 0.001), (3, 40, 0.1)])
def test_lower_bound_is_the_root_below_the_rate(S, n, alpha):
    lower = lower_confidence_bound(S, n, alpha)
    assert lower == pytest.approx(_independent_lower_bound(S, n, alpha), abs=1e-12)
    assert 0 < lower < S / n
    assert log_martingale(S, n, lower) == pytest.approx(math.log(1 / alpha), abs=1e-6)
    assert lower_confidence_bound(0, n, alpha) == 0.0
    vector = lower_confidence_bound(np.array([S, 0]), np.array([n, n]), alpha)  # the bisection path
    assert vector[0] == pytest.approx(lower, abs=1e-12) and vector[1] == 0.0


@pytest.mark.parametrize("S,n,p0", [(10, 10, 0.5), (95, 100, 0.9), (40, 100, 0.6), (3, 60, 0.2)])
def test_one_sided_statistic_against_numerical_integration(S, n, p0):
    """log M+ = log of the mixture of likelihood ratios over q > p0 (q < p0), prior Beta(1/2, 1/2)
    restricted there; integrated with q = sin^2(theta), where the prior density is constant."""
    def mixture(lo, hi):
        ratio = lambda th: math.exp(S * math.log(math.sin(th) ** 2 / p0) + (n - S) * math.log(math.cos(th) ** 2 / (1 - p0)))  # noqa: E731
        return quad(ratio, lo, hi, epsabs=0, epsrel=1e-12, limit=200)[0] / (hi - lo)
    edge = math.asin(math.sqrt(p0))
    assert float(log_martingale_one_sided(S, n, p0, "above")) == pytest.approx(math.log(mixture(edge, math.pi / 2)), abs=1e-8)
    assert float(log_martingale_one_sided(S, n, p0, "below")) == pytest.approx(math.log(mixture(0.0, edge)), abs=1e-8)
    with pytest.raises(ValueError, match="side"):
        log_martingale_one_sided(S, n, p0, "left")
