"""certify/boundary.py: the test at one radius read on a schedule of checks (certify, abstain or go on).

First its guarantees, each computed exactly by a reference written from its definition
(`oracles.first_passage`: the law of a binomial walk carried check by check), not by the dynamic programming
in `certify.boundary` that calibrates and reports them. Each case sits where the guarantee is sharp: the
correct tables spend nearly all of alpha, so a table built at the wrong level, or a crossing the calibration
forgot to count, shows as a probability above alpha (no simulation: no test error). Then the tables against
brute force over every (n, S), the DP's operating characteristics (by simulation too) and REFERENCE
section 4's sample counts, the futility rule, and the arguments refused."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from certify.betting import log_martingale, log_martingale_one_sided
from certify.boundary import EXACT_FROM, check_schedule, sequential_test
from certify.selection import every_class_tests
from oracles import first_passage, log_mixture, log_mixture_one_sided

SIGMA = 0.5

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


# -- the tables: brute force, operating characteristics, REFERENCE section 4 ---------------------------------

@pytest.mark.parametrize("mixture", ["two-sided", "one-sided"])
@pytest.mark.parametrize("p0,alpha", [(0.5, 0.05), (0.6915, 0.001), (0.977, 0.01)])
def test_thresholds_equal_the_direct_definition(p0, alpha, mixture):
    """s_n and a_n agree with brute force over every (n, S): the regions are upper / lower sets.

    Two-sided: the statistic's sign needs S >= p0 n (S <= p0 n to abstain). One-sided: nothing but
    the statistic, which checks that it cannot cross on the wrong side of p0 n."""
    max_n = 400
    test = sequential_test(p0, alpha, max_n, abstain_alpha=0.02, mixture=mixture)
    for n in range(1, max_n + 1):
        S = np.arange(n + 1)
        if mixture == "two-sided":
            above = below = log_martingale(S, n, p0)
            right, left = S >= p0 * n, S <= p0 * n
        else:
            above, below = log_martingale_one_sided(S, n, p0, "above"), log_martingale_one_sided(S, n, p0, "below")
            right = left = True
        certify = right & (above >= math.log(1 / alpha))
        abstain = left & (below >= math.log(1 / 0.02))
        assert np.array_equal(certify, S >= test.certify_min[n]), n
        assert np.array_equal(abstain, S <= test.abstain_max[n]), n


def test_thresholds_are_nested_across_radii():
    """Certifying a larger radius implies certifying every smaller one; abstaining goes the other way."""
    tests = [sequential_test(float(norm.cdf(r / SIGMA)), 0.001, 3000) for r in (0.0, 0.25, 0.5, 1.0)]
    for small, large in zip(tests, tests[1:]):
        assert np.all(small.certify_min <= large.certify_min)
        assert np.all(small.abstain_max <= large.abstain_max)


@pytest.mark.parametrize("mixture", ["two-sided", "one-sided"])
@pytest.mark.parametrize("alpha", [0.05, 0.001])
@pytest.mark.parametrize("p0", [0.6, 0.9])
@pytest.mark.parametrize("step,growth,boundary", [(1, 0.0, "ville"), (37, 0.0, "ville"), (37, 0.0, "exact"),
                                                   (10, 0.05, "exact")])
def test_exact_probability_of_a_wrong_certificate_is_at_most_alpha(alpha, p0, step, growth, mixture, boundary):
    """At p0 and below, on the schedule the test is read at; the exact boundary spends (nearly) all of alpha."""
    checks = check_schedule(3000, step, growth)
    test = sequential_test(p0, alpha, 3000, mixture=mixture, checks=checks, boundary=boundary)
    for p in (p0, p0 - 1e-3, p0 - 0.02):
        certified, abstained, _ = test.operating_characteristics(p)
        assert certified <= alpha, (p, certified)
        assert certified + abstained == pytest.approx(1.0, abs=1e-12)
    assert test.operating_characteristics(min(p0 + 0.08, 0.995))[0] > 0.5  # and it has power
    if boundary == "exact":
        ville = sequential_test(p0, alpha, 3000, mixture=mixture, checks=checks)
        assert np.all(test.certify_min <= ville.certify_min)  # never asks more than Ville's test
        assert test.late_threshold <= ville.late_threshold == pytest.approx(math.log(1 / alpha))


def test_exact_boundary_spends_alpha_by_simulation_too():
    """The DP that calibrates the exact boundary, checked independently: 20,000 simulated paths at p0 cross the
    calibrated thresholds (read only at the checks) as often as it says, nearly alpha, more than Ville's do."""
    alpha, p0, max_n = 0.05, 0.7, 2000
    checks = check_schedule(max_n, 10, growth=0.05)
    exact = sequential_test(p0, alpha, max_n, mixture="one-sided", checks=checks, boundary="exact")
    ville = sequential_test(p0, alpha, max_n, mixture="one-sided", checks=checks)
    S = np.cumsum(np.random.default_rng(0).random((20_000, max_n)) < p0, axis=1)[:, np.array(checks) - 1]
    for test in (exact, ville):
        simulated = np.mean((S >= test.certify_min[np.array(checks)]).any(axis=1))
        predicted = test.operating_characteristics(p0)[0]
        assert abs(simulated - predicted) < 4 * math.sqrt(predicted * (1 - predicted) / 20_000) + 1e-4
    assert 0.9 * alpha < exact.operating_characteristics(p0)[0] <= alpha  # thresholds are integers: not all of it
    assert ville.operating_characteristics(p0)[0] < 0.8 * alpha


def test_exact_boundary_at_the_benchmarks_scale():
    """max_n = 100,000 on the CLI's schedule, r = 2 sigma: alpha spent exactly, all-hit images stop where
    Ville's test stops them (360), the budget's needed rate drops and the rate 0.9812 needs fewer samples."""
    p0, alpha, max_n = float(norm.cdf(2.0)), 0.001, 100_000
    checks = check_schedule(max_n, 10, growth=0.02, max_step=1000)
    exact = sequential_test(p0, alpha, max_n, mixture="one-sided", checks=checks, boundary="exact")
    ville = sequential_test(p0, alpha, max_n, mixture="one-sided", checks=checks)
    assert 0.99 * alpha < exact.operating_characteristics(p0)[0] <= alpha
    assert exact.operating_characteristics(p0 - 0.001)[0] < alpha
    first = [int(np.argmax(t.certify_min <= np.arange(max_n + 1))) for t in (exact, ville)]
    assert first == [360, 360] and exact.needed_rate < ville.needed_rate
    assert exact.operating_characteristics(0.9812)[2] < 0.95 * ville.operating_characteristics(0.9812)[2]


def test_exact_computation_catches_peeking_at_clopper_pearson():
    """The same DP flags the classic mistake: a fixed-n bound re-read after every sample."""
    alpha, p0, max_n = 0.05, 0.6, 3000
    test = sequential_test(p0, alpha, max_n)
    n = np.arange(max_n + 1)
    peeking = (binom.isf(alpha, n, p0) + 1).astype(np.int64)  # least S with P(X >= S) <= alpha
    peeking[0] = max_n + 1
    naive = dataclasses.replace(test, certify_min=peeking, abstain_max=np.full(max_n + 1, -1),
                                reach=np.full(max_n + 2, -max_n - 2))
    assert naive.operating_characteristics(p0)[0] > 2 * alpha
    assert test.operating_characteristics(p0)[0] <= alpha


@pytest.mark.parametrize("radius,pA,expected", [(0.25, 0.99, 28), (0.5, 0.9, 680), (1.0, 0.99, 2200)])
def test_mean_samples_to_decide_match_reference(radius, pA, expected):
    """REFERENCE section 4 (sigma 0.5, alpha 1e-3, batch size 1): exact DP and a Bernoulli simulation."""
    test = sequential_test(float(norm.cdf(radius / SIGMA)), 0.001, 20_000)
    certified, _, mean_n = test.operating_characteristics(pA)
    assert mean_n == pytest.approx(expected, rel=0.25)
    assert certified > 0.99

    rng = np.random.default_rng(0)
    trials, horizon = 200, 4 * expected
    S = np.cumsum(rng.random((trials, horizon)) < pA, axis=1)
    n = np.arange(1, horizon + 1)
    stop = (S >= test.certify_min[n]) | (S <= test.abstain_max[n])
    assert stop.any(axis=1).all()
    stopped_at = stop.argmax(axis=1) + 1
    assert stopped_at.mean() == pytest.approx(mean_n, abs=5 * stopped_at.std() / math.sqrt(trials))


@pytest.mark.parametrize("radius,pA", [(0.25, 0.99), (0.5, 0.9), (1.0, 0.99)])
def test_one_sided_mixture_decides_with_fewer_samples(radius, pA):
    """Exact DP on REFERENCE's cases: the prior on the alternative only saves >= 10% of the samples
    (12%, 15%, 24%) and still certifies with probability > 0.9999."""
    p0 = float(norm.cdf(radius / SIGMA))
    two = sequential_test(p0, 0.001, 20_000).operating_characteristics(pA)
    one = sequential_test(p0, 0.001, 20_000, mixture="one-sided").operating_characteristics(pA)
    assert one[2] < 0.9 * two[2] and one[0] > 0.9999


@pytest.mark.parametrize("mixture", ["two-sided", "one-sided"])
def test_futility_never_certifies_wrongly_and_costs_at_most_gamma_where_the_budget_suffices(mixture):
    """Exact (dynamic programming): with the futility rule the test certifies no more often at p0 and
    below (validity), loses at most gamma of certification probability at rates the budget can certify
    (>= q; measured: at most 0.002 here), and saves a third or more of the samples at p0."""
    p0, alpha, max_n, gamma = 0.9, 0.001, 4000, 0.1
    checks = check_schedule(max_n, 100)
    base = sequential_test(p0, alpha, max_n, mixture=mixture, checks=checks)
    fut = sequential_test(p0, alpha, max_n, mixture=mixture, futility=gamma, checks=checks)
    q = fut.needed_rate
    assert p0 < q < 1 and q == base.needed_rate
    oc = lambda test, p: test.operating_characteristics(p)  # noqa: E731
    for p in (p0, p0 - 0.005):
        assert oc(fut, p)[0] <= oc(base, p)[0] <= alpha
    for p in (q, q + 0.005, q + 0.02):
        lost = oc(base, p)[0] - oc(fut, p)[0]
        assert -1e-12 <= lost <= gamma, (p, lost)
    assert oc(fut, p0)[2] < 0.7 * oc(base, p0)[2]  # at p0 the budget is mostly wasted: futility saves it
    with pytest.raises(ValueError, match="alpha must lie in"):
        sequential_test(p0, alpha, max_n, futility=1.5)


def test_bad_threshold_arguments_raise():
    with pytest.raises(ValueError, match="mixture must be one of"):
        sequential_test(0.7, 0.001, 100, mixture="both")
    with pytest.raises(ValueError, match="p0"):
        sequential_test(1.0, 0.001, 100)
    with pytest.raises(ValueError, match="abstain_alpha|alpha"):
        sequential_test(0.7, 0.001, 100, abstain_alpha=0.0)
    with pytest.raises(ValueError, match="boundary must be one of"):
        sequential_test(0.7, 0.001, 100, boundary="exakt")
    for checks in ([50.5, 100], [50, 90], [60, 50, 100], [0, 100]):
        with pytest.raises(ValueError, match="checks must be"):
            sequential_test(0.7, 0.001, 100, checks=checks)
    for kwargs, match in [(dict(growth=-0.1), "growth"), (dict(growth=float("nan")), "growth"),
                          (dict(step=0), "step"), (dict(max_step=5), "max_step")]:
        with pytest.raises(ValueError, match=match):
            check_schedule(**(dict(max_n=100, step=10) | kwargs))
    assert check_schedule(100, 10, growth=1e308) == (10, 100)  # a huge growth is one jump to max_n, no overflow
