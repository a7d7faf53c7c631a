"""The sequential tests' guarantees, each computed exactly by a reference written from its definition
(`oracles.first_passage`: the law of a binomial walk carried check by check), not by the dynamic
programming in `certify.boundary` that calibrates and reports them. Each case sits where the guarantee is
sharp: the correct tables spend nearly all of alpha, so a table built at the wrong level, or a crossing
the calibration forgot to count, shows as a probability above alpha (no simulation: no test error)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from certify.boundary import EXACT_FROM, check_schedule, sequential_test
from certify.selection import every_class_tests
from oracles import first_passage, log_mixture, log_mixture_one_sided


def _least_reaching(statistic, n: int, threshold: float, rate: float) -> int:
    """The least S >= rate n whose statistic reaches the threshold, by brute force over every S (n + 1: none)."""
    S = np.arange(n + 1)
    ok = (S >= rate * n) & (statistic(S, n) >= threshold)
    return int(S[ok][0]) if ok.any() else n + 1


def _largest_reaching(statistic, n: int, threshold: float, rate: float) -> int:
    """The largest S <= rate n whose statistic reaches the threshold (-1: none)."""
    S = np.arange(n + 1)
    ok = (S <= rate * n) & (statistic(S, n) >= threshold)
    return int(S[ok][-1]) if ok.any() else -1


def _statistics(p0: float, mixture: str):
    """(above, below) of `certify.betting`'s module docstring: the test of p > p0 and its mirror."""
    if mixture == "two-sided":
        return (lambda S, n: log_mixture(S, n, p0)), (lambda S, n: log_mixture(S, n, p0))
    return (lambda S, n: log_mixture_one_sided(S, n, p0, "above")), (lambda S, n: log_mixture_one_sided(S, n, p0, "below"))


@pytest.mark.parametrize("mixture,alpha,p0,max_n,step,growth", [
    ("one-sided", 0.05, 0.6, 1000, 10, 0.0),   # the wrong-sided DP (S > s_k) would reach 1.68 alpha
    ("one-sided", 0.001, 0.6, 3000, 10, 0.05),  # 1.71 alpha
    ("two-sided", 0.001, 0.9, 1000, 10, 0.0),   # 4.44 alpha
    ("two-sided", 0.05, 0.9, 3000, 10, 0.05),   # 1.26 alpha
])
def test_exact_boundary_crosses_at_p0_with_probability_at_most_alpha_by_an_independent_computation(
        mixture, alpha, p0, max_n, step, growth):
    """The exact boundary's thresholds are read at its checks; the reference computes the probability that a
    walk at p0 (and below) ever reaches them. It is <= alpha, and above 0.8 alpha: the calibration spends what
    Ville's bound leaves. The thresholds themselves are the least S >= p0 n whose statistic reaches
    ln(1/alpha) before EXACT_FROM max_n and the calibrated late threshold from there on."""
    checks = np.array(check_schedule(max_n, step, growth))
    test = sequential_test(p0, alpha, max_n, mixture=mixture, checks=checks, boundary="exact")
    s = test.certify_min[checks]
    crossing = first_passage(p0, checks, s)
    assert 0.8 * alpha < crossing <= alpha, f"P(crossing at p0) = {crossing / alpha:.3f} alpha"
    assert first_passage(p0 - 0.01, checks, s) <= alpha
    above, _ = _statistics(p0, mixture)
    threshold = np.where(checks >= EXACT_FROM * max_n, test.late_threshold, math.log(1 / alpha))
    assert test.late_threshold < math.log(1 / alpha)
    reference = np.array([_least_reaching(above, int(n), c, p0) for n, c in zip(checks, threshold)])
    assert np.array_equal(s, np.where(reference <= checks, reference, max_n + 1))  # max_n + 1: cannot certify


@pytest.mark.parametrize("mixture", ["two-sided", "one-sided"])
def test_futility_costs_exactly_what_its_definition_says(mixture):
    """The futility rule (`certify.boundary.sequential_test`): abstain at a check once the one-sided test of
    "rate >= q" below q reaches ln(1/gamma), q = s_max_n / max_n, never where the test certifies. Its exact
    cost in certification probability, from the definition, equals the tables' operating characteristics at
    p0, q and above. At q it is 0.00056 for either mixture, far below the gamma = 0.1 that Ville's inequality
    allows; a rule at level 1 - gamma would cost 0.008-0.010 there."""
    p0, alpha, max_n, gamma = 0.9, 0.001, 4000, 0.1
    checks = np.array(check_schedule(max_n, 100))
    above, below = _statistics(p0, mixture)
    s = np.array([_least_reaching(above, int(n), math.log(1 / alpha), p0) for n in checks])
    mirror = np.array([_largest_reaching(below, int(n), math.log(1 / alpha), p0) for n in checks])
    q = s[-1] / max_n
    futile = np.array([_largest_reaching(lambda S, n: log_mixture_one_sided(S, n, q, "below"), int(n),
                                         math.log(1 / gamma), q) for n in checks])
    futile = np.maximum(mirror, np.minimum(futile, s - 1))
    base = sequential_test(p0, alpha, max_n, mixture=mixture, checks=checks)
    fut = sequential_test(p0, alpha, max_n, mixture=mixture, futility=gamma, checks=checks)
    assert fut.needed_rate == q
    for p in (q, q + 0.005, q + 0.02, p0):
        without, with_rule = first_passage(p, checks, s, mirror), first_passage(p, checks, s, futile)
        assert base.operating_characteristics(p)[0] == pytest.approx(without, abs=1e-9)
        assert fut.operating_characteristics(p)[0] == pytest.approx(with_rule, abs=1e-9), \
            f"at rate {p:.4f} the rule costs {without - fut.operating_characteristics(p)[0]:.2e}, by definition {without - with_rule:.2e}"
        assert 0 <= without - with_rule <= (gamma if p >= q else 1.0)
    cost = first_passage(q, checks, s, mirror) - first_passage(q, checks, s, futile)
    assert 1e-5 < cost < 1e-3


def test_every_class_keeps_its_claims_within_alpha():
    """Selection "all" (`certify.selection`) on two classes tested on the same samples, with rates just below
    p0 = Phi(1/20) = 0.520 and just above 1 - p0 (a linear f just closer than r_1 = sigma / 20 to its
    boundary): every claim at r_1 is wrong. The exact probability that either class's test ever crosses,
    over the paths of one binomial walk, is 0.57 alpha with the union's share of alpha set aside (the tests run
    at alpha / 2). Tests at alpha (the share dropped, or a union that forgets the second class) accept this
    radius (the other class's bound, 0.42 alpha, fits in half of alpha) and claim wrongly with probability
    1.2 alpha."""
    alpha, max_n = 0.01, 300
    checks = check_schedule(max_n, 10)
    p0 = float(norm.cdf(0.05))
    build = lambda level: [sequential_test(p0, level, max_n, None, "one-sided", None, checks, "exact")]  # noqa: E731
    (test,) = every_class_tests(build, alpha, 2)
    wrong = first_passage(p0 - 1e-9, checks, test.certify_min[np.array(checks)], mirrored=True)
    assert 0.5 * alpha < wrong <= alpha, f"P(a wrong claim) = {wrong / alpha:.3f} alpha"
