"""certify/stats.py: Clopper-Pearson against scipy's exact interval and REFERENCE's table, impossible counts
refused; the two-class bound (Cohen et al. 2019, Theorem 1 with the runner-up) valid at rate alpha on
multinomial trials with exact class probabilities, and never looser than the one-class complement."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from certify.stats import certificate, clopper_pearson_lower, clopper_pearson_upper, max_radius, two_class_bounds
from oracles import theorem1_radius, theorem1_top

SIGMA = 0.5


@pytest.mark.parametrize("n", [1, 2, 7, 50, 1000])
@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.3])
def test_clopper_pearson_matches_scipy_exact_interval(n, alpha):
    for k in range(n + 1) if n <= 50 else range(0, n + 1, 37):
        ours = clopper_pearson_lower(k, n, alpha)
        # The one-sided level-alpha bound is the lower end of the two-sided exact interval at 1 - 2 alpha.
        independent = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        assert ours == pytest.approx(independent, abs=1e-9), (k, n, alpha)
    assert clopper_pearson_lower(0, n, alpha) == 0.0
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), abs=1e-12)


def test_clopper_pearson_reference_table():
    # REFERENCE.md section 1: largest certifiable radius, alpha = 0.001.
    for n, p, phi_inv in [(100, 0.933254, 1.5005), (1000, 0.993116, 2.4633), (10_000, 0.999309, 3.1986),
                          (100_000, 0.999931, 3.8115)]:
        assert clopper_pearson_lower(n, n, 0.001) == pytest.approx(p, abs=1e-6)
        assert max_radius(1.0, n, 0.001) == pytest.approx(phi_inv, abs=1e-4)
        assert max_radius(0.25, n, 0.001) == pytest.approx(phi_inv / 4, abs=1e-3)


@pytest.mark.parametrize("bad", [dict(k=-1, n=5), dict(k=6, n=5), dict(k=0, n=0)])
def test_clopper_pearson_rejects_impossible_counts(bad):
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson_lower(alpha=0.01, **bad)


@pytest.mark.parametrize("p", [(0.3, 0.5, 0.2), (0.05, 0.6, 0.35), (0.25, 0.4, 0.35)])
@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_two_class_radius_stays_within_its_true_value_at_rate_alpha(p, alpha):
    """Multinomial trials (10,000 at alpha 0.05, 3,000 at 0.001): a certificate is wrong when it names
    another class than the top one or a radius above the exact two-class radius; that happens at rate
    <= alpha (up to the binomial 99.9% quantile), and point estimates in place of the bounds fail it."""
    p = np.array(p)
    top, true = theorem1_top(p, SIGMA)  # the truth from `oracles`
    rng = np.random.default_rng(0)
    trials = 10_000 if alpha > 0.01 else 3_000
    decide = functools.lru_cache(maxsize=None)(
        lambda cA, counts: certificate(list(counts), cA, 100, alpha, SIGMA, bound="two-class"))
    wrong = naive_wrong = 0
    for _ in range(trials):
        cA = int(rng.multinomial(100, p).argmax())
        counts = rng.multinomial(1000, p).tolist()
        c = decide(cA, tuple(counts))
        wrong += c.prediction != -1 and (c.prediction != top or c.radius > true)
        hat = sorted(counts, reverse=True)  # the point estimates instead of bounds: not a certificate
        naive_wrong += theorem1_radius(SIGMA, hat[0] / 1000, hat[1] / 1000) > true
    assert wrong <= binom.ppf(0.999, trials, alpha), (wrong, trials * alpha)
    assert naive_wrong > binom.ppf(0.999, trials, alpha)  # the check can fail


def test_bounds_hold_together_and_never_exceed_one_class_complement():
    pA, pB = two_class_bounds([900, 60, 40], 0, 0.001)
    assert pB <= 1 - pA and pB == pytest.approx(min(1 - pA, clopper_pearson_upper(60, 1000, 0.001 / 4)))
    # 1000 classes: the Bonferroni share is alpha / (2 * 999) each
    counts = [400] + [1] * 600 + [0] * 399
    pA, pB = two_class_bounds(counts, 0, 0.001)
    assert pB == pytest.approx(clopper_pearson_upper(max(counts[1:]), 1000, 0.001 / 1998))
    assert certificate(counts, 0, 100, 0.001, 0.5, bound="two-class").radius > 0  # pA < 1/2, still certified
    assert certificate(counts, 0, 100, 0.001, 0.5).prediction == -1
    with pytest.raises(ValueError, match="needs K >= 2"):
        two_class_bounds([10], 0, 0.001)
    with pytest.raises(ValueError, match="bound must be one of one-class, two-class, got 'three'"):
        certificate([1, 2], 1, 10, 0.001, 0.5, bound="three")
