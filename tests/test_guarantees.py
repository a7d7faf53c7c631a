"""Each certificate's 1 - alpha guarantee (validity across certify/stats.py, smoothing.py and sequential.py),
computed exactly where the bound is sharp, then by trials through the engine on oracles whose class
probabilities are exact.

An exact error rate comes from enumerating every outcome of the counts (binomial or multinomial),
weighting each by its probability and asking the code under test what it certifies there; the truth it is
compared with comes from `oracles` (Clopper-Pearson, Theorem 1 and the confidence sequence written from
their definitions; classifiers whose class probabilities are exact). The class probabilities are chosen at
the bounds' discontinuities, so the correct procedure errs with probability just below its level and a
bound at the wrong level errs visibly more often (no simulation, so no test error). The trials (a linear
oracle, the band oracle with three classes) allow for their binomial error.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from certify.sequential import certify_anytime, certify_anytime_many
from certify.smoothing import ABSTAIN, Smoothed
from certify.stats import certificate, radius_from_p, two_class_radius
from fixtures import linear_at_distance
from oracles import Bands, Scripted, cp_lower, cp_upper, cs_lower, cs_upper, outcomes, theorem1_radius, theorem1_top

ALPHA, SIGMA = 0.05, 0.5


def test_one_class_certificate_is_wrong_with_probability_just_below_alpha():
    """A two-class linear f whose class 1 has rate pA under noise: g is robust exactly within sigma PhiInv(pA)
    (REFERENCE section 1). pA sits just below the Clopper-Pearson bound of 70 hits in 100, so a radius above
    the true one is certified with probability just below alpha (Clopper-Pearson at 2 alpha: 1.5 alpha; the
    radius from nA / n: 0.51)."""
    n = 100
    pA = cp_lower(70, n, ALPHA) * (1 - 1e-9)
    true_radius = SIGMA * norm.ppf(pA)
    wrong = 0.0
    for nA in range(n + 1):
        c = certificate([n - nA, nA], 1, 100, ALPHA, SIGMA)
        wrong += binom.pmf(nA, n, pA) * (c.prediction == 1 and c.radius > true_radius)
    assert 0.9 * ALPHA < wrong <= ALPHA, f"P(wrong certificate) = {wrong / ALPHA:.3f} alpha"


def test_two_class_certificate_is_wrong_with_probability_below_alpha():
    """Theorem 1 needs pA >= pA_lower and max_{c != A} p_c <= pB_upper together with probability 1 - alpha:
    pA_lower at alpha / 2, each of the K - 1 = 2 other classes at alpha / 4. Three classes whose rates sit at
    those bounds' discontinuities (40 and 12 of 60 draws); cA is the top class (selection is independent of
    these counts: `test_selection_and_estimation_samples_are_independent`). A certificate whose bounds fail
    has probability 0.60 alpha; with both bounds at alpha (no split) it would be 1.43 alpha."""
    n = 60
    pA, pB = cp_lower(40, n, ALPHA / 2) * (1 - 1e-9), cp_upper(12, n, ALPHA / 4) * (1 + 1e-9)
    p = (pA, pB, 1 - pA - pB)
    assert p[0] > p[1] > p[2] > 0

    @lru_cache(maxsize=None)
    def wrong_at(nA: int, others: tuple[int, int]) -> bool:
        c = certificate([nA, *others], 0, 100, ALPHA, SIGMA, bound="two-class")
        return c.prediction == 0 and (c.pA_lower > pA or c.pB_upper < pB)

    wrong = sum(w for counts, w in outcomes(n, p) if wrong_at(counts[0], counts[1:]))
    assert 0.5 * ALPHA < wrong <= ALPHA, f"P(wrong certificate) = {wrong / ALPHA:.3f} alpha"


@pytest.mark.parametrize("cuts,mu,tight", [([0.0, 10.0], -0.3, True), ([0.0, 10.0], -0.05, True),
                                           ([-0.3, 0.5], 0.1, False), ([-0.3, 0.5], -0.6, False)])
def test_theorem_one_radius_is_sound_and_tight_on_the_band_oracle(cuts, mu, tight):
    """At the exact class probabilities the two-class radius is Theorem 1's, sigma / 2 (PhiInv(pA) - PhiInv(pB)),
    and g is constant within it: it never exceeds g's true robust radius (the band oracle's, found by scanning
    w.x). With one band out of reach the two classes split the mass and the radius is the true one."""
    f = Bands(cuts, torch.ones(4))
    p = f.probabilities(mu, SIGMA)
    top, second = np.argsort(p)[::-1][:2]
    radius, true = two_class_radius(SIGMA, p[top], p[second]), f.robust_radius(mu, SIGMA)
    assert radius == pytest.approx(theorem1_radius(SIGMA, p[top], p[second]), rel=1e-12)
    assert radius_from_p(SIGMA, p[top]) <= radius <= true + 1e-9
    assert (radius > (1 - 1e-6) * true) == tight


def test_selection_and_estimation_samples_are_independent():
    """Cohen's cA comes from the "selection" samples, its bound from fresh "estimation" samples. The band
    oracle's two classes have probability exactly 1/2 at this image, so whichever class selection picks, its
    count among n fresh samples is Binomial(n, 1/2): above n/2 in half of the images. Had cA been picked on
    samples that also enter the bound (n0 = n, n odd), its count would always be the larger one."""
    f = Bands([0.0], torch.ones(4))
    x = torch.full((1, 2, 2), 0.5)
    f.cuts[0] = f.mu(x)  # the image sits on the cut: each class has probability 1/2
    g = Smoothed(f, sigma=SIGMA, num_classes=2)
    trials, n = 40, 11
    above = sum(g.certify_full(x, n0=n, n=n, alpha=ALPHA, batch_size=n, seed=2, index=i).nA > n / 2
                for i in range(trials))
    assert above <= binom.isf(1e-4, trials, 0.5), f"{above} of {trials} counts above n/2"  # reused samples: all 40


def test_anytime_two_class_is_wrong_no_more_often_than_its_definition():
    """The anytime mode's two-class certificate (`certify.sequential.certify_anytime`, bound "two-class"),
    through the engine on every outcome of one check of 20 draws (a scripted classifier answers the counts):
    its exact probability of a wrong certificate is at most that of the definition, the confidence sequence at
    alpha / 2 for cA and alpha / (2 (K - 1)) for the runner-up, which is <= alpha. (Without the split it is 4.6
    times as large, yet far below alpha: a confidence sequence read once is conservative, so only a
    comparison with the definition can see a missing split.)"""
    alpha, n, p = 0.2, 20, (0.5, 0.3, 0.2)
    x = torch.zeros(1, 1, 1)

    @lru_cache(maxsize=None)
    def engine(nA: int, nB: int) -> bool:
        labels = [0] + [0] * nA + [1] * nB + [2] * (n - nA - nB)  # one selection draw picks class 0
        g = Smoothed(Scripted(labels, 3), sigma=SIGMA)
        c = certify_anytime(g, x, alpha, max_n=n, batch_size=n, n0=1, step=n, rtol=0.0, bound="two-class")
        assert c.n == n and c.nA == nA
        return c.prediction == 0 and (c.pA_lower > p[0] or c.pB_upper < p[1])

    @lru_cache(maxsize=None)
    def definition(nA: int, nB: int) -> bool:
        lower = cs_lower(nA, n, alpha / 2)
        upper = min(cs_upper(nB, n, alpha / 4), 1 - lower)
        return lower > upper and (lower > p[0] or upper < p[1])

    counts = [(c[0], max(c[1:]), w) for c, w in outcomes(n, p)]
    ours = sum(w for nA, nB, w in counts if engine(nA, nB))  # nB: the larger other count, all that enters
    reference = sum(w for nA, nB, w in counts if definition(nA, nB))
    assert 0 < reference <= alpha
    assert ours <= reference * (1 + 1e-9), f"P(wrong) = {ours / reference:.2f} times the definition's"


def test_predict_returns_the_wrong_class_with_probability_at_most_half_alpha():
    """PREDICT (`Smoothed.predict_full`, the attack's decision) on two classes with rates 1/2 + 1e-9 and
    1/2 - 1e-9, on every outcome of 40 draws: it returns class 1 (not g(x) = 0) only when the two-sided
    binomial test rejects in class 1's favour, one tail of a test at alpha: 0.39 alpha here, at most alpha / 2
    (Cohen et al.'s bound is alpha). A one-sided test, or the two-sided one at 2 alpha, would give 0.81 alpha."""
    n, p0 = 40, 0.5 + 1e-9
    x = torch.zeros(1, 1, 1)
    wrong = 0.0
    for nA in range(n + 1):
        g = Smoothed(Scripted([0] * nA + [1] * (n - nA), 2), sigma=SIGMA)
        answer = g.predict_full(x, n, ALPHA, batch_size=n)
        assert (answer.nA, answer.nB) == (max(nA, n - nA), min(nA, n - nA))
        wrong += binom.pmf(nA, n, p0) * (answer.prediction == 1)
        assert answer.prediction in (ABSTAIN, 0, 1)
    assert 0.35 * ALPHA < wrong <= ALPHA / 2, f"P(wrong class) = {wrong / ALPHA:.3f} alpha"


# -- trials through the engine ------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha,trials", [(0.2, 2000), (0.001, 2000)])
def test_linear_oracle_false_certificates_within_alpha(alpha, trials):
    """CERTIFY on a linear f, whose g is the same half-space: a radius above the true distance is a false
    certificate; it may happen with probability <= alpha.

    Allowance: the count of false certificates over independent trials is Binomial(trials, q) with
    q <= alpha; we accept up to alpha * trials + 4 standard deviations + 1 (a false failure rate
    below 1e-4), which a bound that ignored alpha (or used the point estimate) would exceed by far.
    """
    sigma = 0.5
    pA = 0.9
    f, x = linear_at_distance(sigma * norm.ppf(pA))
    g = Smoothed(f, sigma=sigma)
    false = certified = 0
    for i in range(trials):
        c, r = g.certify(x, n0=10, n=100, alpha=alpha, batch_size=110, seed=1, index=i)
        certified += c == 1
        false += (c != ABSTAIN) and (r > f.distance(x) or c != 1)
    allowance = alpha * trials + 4 * math.sqrt(trials * alpha * (1 - alpha)) + 1
    assert false <= allowance, (false, allowance)
    assert certified > trials // 2  # the test has power: most trials certify class 1


def test_linear_oracle_radius_approaches_true_distance():
    sigma = 0.25
    f, x = linear_at_distance(0.3)
    g = Smoothed(f, sigma=sigma)
    radii = [g.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=50_000, seed=3, index=i)[1] for i in range(5)]
    assert all(r <= 0.3 for r in radii)
    assert np.mean(radii) == pytest.approx(0.3, rel=0.03)


def _band_images(count: int, seed: int) -> tuple[Bands, Smoothed, list[torch.Tensor]]:
    """The band oracle with cuts at -0.25 and 0.25 along a random unit w (three classes), and images spread
    across the bands."""
    torch.manual_seed(seed)
    w = torch.randn(16)
    w /= w.norm()
    f = Bands([-0.25, 0.25], w)
    xs = [(0.5 + float(torch.empty(()).uniform_(-0.6, 0.6)) * w).view(1, 4, 4) for _ in range(count)]
    return f, Smoothed(f, sigma=SIGMA, num_classes=3), xs


def test_engine_three_class_oracle_two_class_is_valid_and_certifies_spread_votes():
    """Through Smoothed.certify_full on real noise: 2,000 images of the three-class band oracle, each
    with its exact two-class radius; the one-class bound abstains where the top class has < 1/2."""
    f, g, xs = _band_images(2000, seed=0)
    alpha, trials = 0.01, len(xs)
    wrong = gained = 0
    for i, x in enumerate(xs):
        top, true = theorem1_top(f.probabilities(f.mu(x), SIGMA), SIGMA)
        c = g.certify_full(x, n0=50, n=500, alpha=alpha, batch_size=550, index=i, bound="two-class")
        wrong += c.prediction != -1 and (c.prediction != top or c.radius > true)
        one = g.certify_full(x, n0=50, n=500, alpha=alpha, batch_size=550, index=i)
        gained += c.radius > one.radius
        assert c.pB_upper is not None and c.pA_lower <= 1 and one.pB_upper is None
    assert wrong <= binom.ppf(0.999, trials, alpha), wrong
    assert gained > trials / 10  # the middle band spreads votes: the runner-up bound pays off often


def test_anytime_two_class_on_the_oracle_is_valid_at_its_stopping_time():
    """The confidence-sequence form (anytime mode): 1,000 images of the three-class band oracle, stopped by
    the anytime rule; wrong certificates stay at rate <= alpha and the spread votes still gain radius."""
    f, g, xs = _band_images(1000, seed=1)
    alpha, trials = 0.01, len(xs)
    two = list(certify_anytime_many(g, xs, alpha, max_n=2000, batch_size=2000, step=250, bound="two-class"))
    one = list(certify_anytime_many(g, xs, alpha, max_n=2000, batch_size=2000, step=250))
    wrong = 0
    for x, c in zip(xs, two):
        top, true = theorem1_top(f.probabilities(f.mu(x), SIGMA), SIGMA)
        wrong += c.prediction != -1 and (c.prediction != top or c.radius > true)
    assert wrong <= binom.ppf(0.999, trials, alpha), wrong
    assert sum(c.radius > o.radius for c, o in zip(two, one)) > trials / 10
    assert all(c.pB_upper is not None for c in two) and all(o.pB_upper is None for o in one)
