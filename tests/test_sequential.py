"""Anytime-valid sequential certification: exact validity, the linear oracle, REFERENCE section 4."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import betaln
from scipy.stats import binom, norm
from torch import nn

from certify import Smoothed, max_radius
from certify.sequential import (
    anytime_radius, certify_anytime, certify_anytime_many, certify_at, certify_at_many, check_schedule, log_martingale,
    log_martingale_one_sided, lower_confidence_bound, sequential_test,
)

SIGMA = 0.5


class LinearBinary(nn.Module):
    """f(x) = [w.x + b > 0] as two logits; distance to the boundary |w.x + b| / |w|."""

    num_classes = 2

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w.flatten().float())
        self.b = float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([-z, z], dim=1)


def _linear_at_distance(distance: float) -> tuple[Smoothed, torch.Tensor]:
    """A smoothed linear classifier and an image at exactly ``distance`` from its boundary."""
    w = torch.tensor([1.0, -2.0, 0.5, 2.0])
    x = torch.full((1, 2, 2), 0.5)
    b = distance * float(w.norm()) - float(x.flatten() @ w)
    return Smoothed(LinearBinary(w, b), sigma=SIGMA), x


def _independent_lower_bound(S: int, n: int, alpha: float) -> float:
    f = lambda p: (betaln(S + 0.5, n - S + 0.5) - betaln(0.5, 0.5) - S * math.log(p)
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
        ratio = lambda th: math.exp(S * math.log(math.sin(th) ** 2 / p0) + (n - S) * math.log(math.cos(th) ** 2 / (1 - p0)))
        return quad(ratio, lo, hi, epsabs=0, epsrel=1e-12, limit=200)[0] / (hi - lo)
    edge = math.asin(math.sqrt(p0))
    assert float(log_martingale_one_sided(S, n, p0, "above")) == pytest.approx(math.log(mixture(edge, math.pi / 2)), abs=1e-8)
    assert float(log_martingale_one_sided(S, n, p0, "below")) == pytest.approx(math.log(mixture(0.0, edge)), abs=1e-8)
    with pytest.raises(ValueError, match="side"):
        log_martingale_one_sided(S, n, p0, "left")


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


@pytest.mark.parametrize("mixture,boundary", [("two-sided", "ville"), ("one-sided", "ville"), ("one-sided", "exact")])
def test_linear_oracle_sequential_false_certificates_within_alpha(mixture, boundary):
    """Radius just above the true distance: certificates there are false; rate <= alpha (and = the DP's)."""
    alpha, trials, max_n, step = 0.05, 400, 2000, 50
    distance = 0.3
    g, x = _linear_at_distance(distance)
    radii = [0.5 * distance, distance * 1.0001]
    results = list(certify_at_many(g, [x] * trials, radii, alpha, max_n, batch_size=1000, seed=1, step=step,
                                   mixture=mixture, boundary=boundary))
    assert {r.cA for r in results} == {1}
    false = np.array([r.certified[1] for r in results])
    allowance = 3 * math.sqrt(alpha * (1 - alpha) / trials)  # 3 binomial standard errors
    assert false.mean() <= alpha + allowance
    pA = float(norm.cdf(distance / SIGMA))
    test = sequential_test(float(norm.cdf(radii[1] / SIGMA)), alpha, max_n, mixture=mixture,
                           checks=check_schedule(max_n, step), boundary=boundary)
    predicted = test.operating_characteristics(pA)[0]
    assert abs(false.mean() - predicted) <= 4 * math.sqrt(predicted * (1 - predicted) / trials) + 1 / trials
    assert np.mean([r.certified[0] for r in results]) > 0.9  # the smaller, true radius is found


def test_linear_oracle_anytime_radius_within_true_distance():
    alpha, trials = 0.05, 300
    distance = 0.4
    g, x = _linear_at_distance(distance)
    results = list(certify_anytime_many(g, [x] * trials, alpha, max_n=5000, batch_size=2000, seed=2, step=200))
    radii = np.array([r.radius for r in results])
    assert np.mean(radii > distance) <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert np.median(radii) > 0.5 * distance  # and it certifies something sizeable


@pytest.mark.parametrize("radius,pA", [(0.25, 0.99), (0.5, 0.9), (1.0, 0.99)])
def test_one_sided_mixture_decides_with_fewer_samples(radius, pA):
    """Exact DP on REFERENCE's cases: the prior on the alternative only saves >= 10% of the samples
    (12%, 15%, 24%) and still certifies with probability > 0.9999."""
    p0 = float(norm.cdf(radius / SIGMA))
    two = sequential_test(p0, 0.001, 20_000).operating_characteristics(pA)
    one = sequential_test(p0, 0.001, 20_000, mixture="one-sided").operating_characteristics(pA)
    assert one[2] < 0.9 * two[2] and one[0] > 0.9999


def test_grid_claims_form_a_prefix(monkeypatch):
    """A larger radius whose test crosses is not claimed when a smaller one's test abstains: that
    rule is what lets one alpha cover the grid when the thresholds are not nested (one-sided)."""
    real = sequential_test

    def crafted(p0, alpha, max_n, *args):
        t = real(p0, alpha, max_n, *args)
        never, always = np.full(max_n + 1, max_n + 1), np.zeros(max_n + 1, dtype=np.int64)
        if p0 < float(norm.cdf(0.3 / SIGMA)):  # the small radius abstains at the first check
            return dataclasses.replace(t, certify_min=never, abstain_max=np.arange(max_n + 1))
        return dataclasses.replace(t, certify_min=always, abstain_max=np.full(max_n + 1, -1))  # large: crosses

    monkeypatch.setattr("certify.sequential.sequential_test", crafted)
    g, x = _linear_at_distance(0.5)
    c = certify_at(g, x, [0.25, 0.5], alpha=0.01, max_n=1000, batch_size=100)
    assert c.certified == (False, False) and c.prediction == -1 and c.n == 100
    c = certify_at(g, x, [0.5], alpha=0.01, max_n=1000, batch_size=100)  # alone, it is claimed
    assert c.certified == (True,)


def test_grid_stops_when_every_radius_is_decided():
    g, x = _linear_at_distance(3.0)  # pA = Phi(6): every draw hits
    c = certify_at(g, x, [0.25, 0.5], alpha=0.001, max_n=10_000, batch_size=10)
    assert c.certified == (True, True) and c.prediction == 1 and c.radius == 0.5
    assert c.n == max(c.decided_at) < 200 and c.nA == c.n and c.n0 == 51  # selection: 51 agreeing draws settle it
    assert norm.cdf(0.5 / SIGMA) <= c.pA_lower == lower_confidence_bound(c.n, c.n, 0.001)
    g, x = _linear_at_distance(0.0)  # pA = 1/2: the mirror test abstains early
    c = certify_at(g, x, 0.5, alpha=0.001, max_n=100_000, batch_size=100)
    assert c.certified == (False,) and c.prediction == -1 and c.radius == 0.0 and c.n < 2000


def test_anytime_stops_early_and_abstains_when_hopeless():
    g, x = _linear_at_distance(0.0)
    c = certify_anytime(g, x, alpha=0.001, max_n=100_000, batch_size=500)
    assert c.prediction == -1 and c.radius == 0.0 and c.n < 100_000
    g, x = _linear_at_distance(0.5)  # pA = Phi(1) = 0.84
    c = certify_anytime(g, x, alpha=0.001, max_n=100_000, batch_size=500)
    assert c.prediction == 1 and 0.3 < c.radius < 0.5 and c.n < 100_000
    assert c.pA_lower >= lower_confidence_bound(c.nA, c.n, 0.001)  # the running max of L_n
    assert c.radius == pytest.approx(SIGMA * norm.ppf(c.pA_lower), abs=1e-12)


def test_selection_stops_once_its_argmax_is_settled_and_picks_cohens_class():
    """Curtailed selection stops once no remaining draw can change the argmax (ties to the lower class), and
    returns the argmax of all n0 draws of the selection stream: the draws it used (recorded, and redrawn from
    the stream in the same chunks) followed by the rest of the stream's n0. It uses 51 of 100 draws when they
    all agree."""
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    seen = []

    class Recording(nn.Module):
        def forward(self, images):
            seen.append(images.clone())
            return f(images)

    g = Smoothed(Recording(), sigma=5.0, num_classes=3)  # votes spread
    x = torch.rand(1, 4, 4)
    used, n0 = [], 100
    for index in range(40):
        seen.clear()
        c = certify_at(g, x, 0.1, alpha=0.01, max_n=10, batch_size=100, index=index, n0=n0)
        sizes = np.cumsum([len(batch) for batch in seen])
        chunks = seen[:int(np.searchsorted(sizes, c.n0)) + 1]
        assert sum(len(batch) for batch in chunks) == c.n0  # the selection draws come first
        stream = g.generator(0, index, "selection")
        with torch.no_grad():
            for batch in chunks:
                assert torch.equal(batch, torch.randn(batch.shape, generator=stream).mul_(5.0).add_(x))
            rest = torch.randn((n0 - c.n0, *x.shape), generator=stream).mul_(5.0).add_(x)
            votes = torch.cat([f(batch).argmax(1) for batch in [*chunks, rest]])
        counts = np.bincount(votes[:c.n0].numpy(), minlength=3)
        assert c.cA == int(np.bincount(votes.numpy(), minlength=3).argmax()), index
        left = n0 - c.n0
        others = np.delete(np.arange(3), c.cA)
        assert all(counts[c.cA] - counts[j] > left or (counts[c.cA] - counts[j] == left and j > c.cA) for j in others)
        used.append(c.n0)
    assert min(used) < n0 <= max(used)  # some settle early, some need all n0
    g1, x1 = _linear_at_distance(3.0)  # every draw the same class
    assert certify_at(g1, x1, 0.1, alpha=0.01, max_n=10, batch_size=100).n0 == 51


def test_packing_does_not_change_results():
    """Several images per batch give exactly the per-image results (same step, same streams)."""
    torch.manual_seed(0)
    g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), sigma=SIGMA, num_classes=3)
    xs = [torch.rand(1, 2, 2) for _ in range(7)]
    packed = list(certify_at_many(g, xs, [0.1, 0.3], 0.01, 600, batch_size=120, seed=3, indices=range(10, 17),
                                  n0=30, step=40))
    alone = [certify_at(g, x, [0.1, 0.3], 0.01, 600, batch_size=40, seed=3, index=i, n0=30)
             for i, x in zip(range(10, 17), xs)]
    assert packed == alone
    packed = list(certify_anytime_many(g, xs, 0.01, 600, batch_size=100, seed=3, n0=30, step=25))
    alone = [certify_anytime(g, x, 0.01, 600, batch_size=25, seed=3, index=i, n0=30) for i, x in enumerate(xs)]
    assert packed == alone


@pytest.mark.parametrize("kwargs,match", [
    (dict(radius=-0.1), "radius"), (dict(radius=[]), "radius"), (dict(alpha=1.5), "alpha"),
    (dict(step=200), "step"), (dict(max_n=0), "max_n"), (dict(n0=0), "n0"),
])
def test_bad_arguments_raise(kwargs, match):
    g, x = _linear_at_distance(0.3)
    args = dict(radius=0.25, alpha=0.001, max_n=100, batch_size=100) | kwargs
    with pytest.raises(ValueError, match=match):
        certify_at(g, x, **args)


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


def test_the_readme_command_with_its_defaults_spends_the_benchmarks_samples(tmp_path):
    """`dsmooth certify --mode sequential` without schedule options checks after 10 samples, then 2% of n
    apart (at most --batch), with the exact boundary, the futility rule at 0.3 and every class tested,
    whatever the batch: so it spends exactly what benchmarks/sequential_mnist.py's "one-sided, futility 0.3,
    exact, all classes" row spends on the same digits."""
    import json

    from certify.cli import main
    from certify.data import create_dataset
    from certify.sequential import certify_at_many
    from certify.smoothing import Smoothed
    from classifiers import create_classifier
    from denoisers import create_denoiser

    out = tmp_path / "seq.tsv"
    assert main(["certify", "--mode", "sequential", "--radii", "0.25,0.5,1.0", "--classifier", "small-cnn.mnist5k",
                 "--denoiser", "dncnn.mnist5k_s050_mse", "--dataset", "mnist5k:test", "--sigma", "0.5",
                 "--n", "3000", "--mixture", "one-sided", "--skip", "125", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0  # on the CPU, like the reference below, GPU or not
    options = json.loads(out.with_suffix(".json").read_text())["settings"]["options"]
    assert (options["step"], options["growth"], options["boundary"], options["futility"], options["selection"]) == \
        (10, 0.02, "exact", 0.3, "all")
    lines = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    used = [int(line[8]) + int(line[9]) for line in lines]  # test samples + selection samples
    data = create_dataset("mnist5k:test")
    g = Smoothed(create_classifier("small-cnn.mnist5k"), create_denoiser("dncnn.mnist5k_s050_mse"), sigma=0.5)
    indices = list(range(0, 1000, 125))
    bench = [c.n + c.n0 for c in certify_at_many(g, [data[i][0] for i in indices], [0.25, 0.5, 1.0], 0.001, 3000,
                                                 1000, indices=indices, step=10, growth=0.02, max_step=1000,
                                                 mixture="one-sided", futility=0.3, boundary="exact",
                                                 selection="all")]
    assert used == bench and min(used) < 400  # checks every 100 after 100 selection draws spent >= 100 + 400


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


def test_futility_option_is_checked_and_recorded(tmp_path, capsys):
    from certify.cli import main

    args = ["certify", "--mode", "sequential", "--radii", "0.5", "--classifier", "small-cnn.mnist5k",
            "--dataset", "mnist5k:test", "--sigma", "0.5", "--n", "500", "--skip", "250", "--quiet"]
    assert main([*args, "--futility", "2", "--out", str(tmp_path / "a.tsv")]) == 2
    assert "futility must be a probability in (0, 1)" in capsys.readouterr().err
    assert main(["certify", *args[3:], "--futility", "0.1", "--out", str(tmp_path / "b.tsv")]) == 2
    assert "is an option of the sequential mode, not of 'certify'" in capsys.readouterr().err
    assert main([*args, "--futility", "0.1", "--out", str(tmp_path / "c.tsv")]) == 0
    import json

    assert json.loads((tmp_path / "c.json").read_text())["settings"]["options"]["futility"] == 0.1
    with pytest.raises(SystemExit) as stop:  # argparse's own usage error
        main([*args, "--futility", "maybe", "--out", str(tmp_path / "d.tsv")])
    assert stop.value.code == 2
    assert "expected a probability in (0, 1) or 'off', got 'maybe'" in capsys.readouterr().err
    assert not (tmp_path / "d.tsv").exists()
    # off, on the command line or as YAML's bare `off` (false) in a compare config, is recorded as "off"
    assert main([*args, "--futility", "off", "--out", str(tmp_path / "e.tsv")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["settings"]["options"]["futility"] == "off"
    from certify.settings import RunSettings

    settings = RunSettings(classifier="small-cnn", dataset="digits", sigma=0.5, n=100, mode="sequential",
                           options={"radii": [0.5], "futility": False}).validate()
    assert settings.options.futility == "off"
    # resuming with the default (0.3) is refused: the run was made with the rule off
    assert main([*args, "--out", str(tmp_path / "e.tsv")]) == 2
    assert "futility" in capsys.readouterr().err


def test_schedule_and_boundary_options_are_checked_and_recorded(tmp_path, capsys):
    """--growth and --boundary: a bad value names itself and writes nothing; the wrong mode is refused; the
    values are recorded, and resuming with another boundary is refused, naming it."""
    import json

    from certify.cli import main
    from certify.settings import RunSettings

    args = ["certify", "--mode", "sequential", "--radii", "0.5", "--classifier", "small-cnn.mnist5k",
            "--dataset", "mnist5k:test", "--sigma", "0.5", "--n", "500", "--skip", "250", "--quiet"]
    assert main([*args, "--growth", "-0.1", "--out", str(tmp_path / "a.tsv")]) == 2
    assert "growth must be a number >= 0" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main(["certify", *args[5:], "--boundary", "ville", "--out", str(tmp_path / "b.tsv")]) == 2
    assert "boundary is an option of the sequential mode, not of 'certify'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--boundary", "exakt", "--out", str(tmp_path / "c.tsv")])
    assert "--boundary: expected one of 'exact', 'ville', got 'exakt'; did you mean 'exact'?" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main([*args, "--boundary", "ville", "--growth", "0", "--step", "50", "--out", str(tmp_path / "d.tsv")]) == 0
    options = json.loads((tmp_path / "d.json").read_text())["settings"]["options"]
    assert (options["boundary"], options["growth"], options["step"]) == ("ville", 0, 50)
    used = [int(line.split("\t")[8]) for line in (tmp_path / "d.tsv").read_text().splitlines()[1:]]
    assert all(n % 50 == 0 for n in used)  # growth 0: a check every --step samples
    assert main([*args, "--growth", "0", "--step", "50", "--out", str(tmp_path / "d.tsv")]) == 2  # exact now
    assert "boundary" in capsys.readouterr().err
    with pytest.raises(ValueError, match="boundary must be"):
        RunSettings(classifier="small-cnn", dataset="digits", sigma=0.5, n=100, mode="sequential",
                    options={"radii": [0.5], "boundary": "both"}).validate()
