"""certify/selection.py, selection "all": every class tested on the same samples, no selection draws; the union
over the classes computed exactly, valid on a three-class oracle whose class probabilities are exact. (The
--selection option of the sequential mode: tests/test_sequential.py.)"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from certify.boundary import check_schedule, crossing_probability, sequential_test
from certify.selection import UNION_SHARES, every_class_tests, others_crossing
from certify.sequential import certify_at, certify_at_many
from certify.smoothing import Smoothed
from oracles import Bands  # with two cuts: three classes whose probabilities are exact

SIGMA = 0.5


def _three_bands(mu: float) -> tuple[Bands, Smoothed, torch.Tensor]:
    """The oracle with w.x at ``mu`` against bands at -0.3 and 0.5."""
    torch.manual_seed(0)
    w = torch.randn(16)
    w /= w.norm()
    x = torch.full((1, 4, 4), 0.5)
    shift = float(x.flatten() @ w) - mu  # the bands at -0.3 and 0.5 from w.x - shift = mu
    f = Bands([shift - 0.3, shift + 0.5], w)
    return f, Smoothed(f, sigma=SIGMA, num_classes=3), x


def _test(p0: float, alpha: float = 0.01, max_n: int = 2000):
    return sequential_test(p0, alpha, max_n, mixture="one-sided", checks=check_schedule(max_n, 10, 0.02, 100),
                           boundary="exact")


def test_others_crossing_sums_the_other_classes_exactly_then_bounds_by_blocks():
    t = _test(0.75)
    k, s = t.checks, t.certify_min[t.checks]
    f = [crossing_probability(1 / j, k, s) for j in range(2, 41)]
    assert others_crossing(t, 10) == pytest.approx(sum(f[:9]), rel=1e-12)  # j = 2..10, each exact
    assert sum(f) <= others_crossing(t, 40) <= sum(f[:14]) + 26 * f[14]  # j >= 16 in blocks [16, 32), [32, 40]
    assert others_crossing(t, 1) == 0.0 and 0 < others_crossing(t, 2) == f[0] < 1e-3


def test_every_class_level_spends_the_least_share_and_refuses_when_half_of_alpha_would_not_do(monkeypatch):
    build = lambda level: [_test(float(norm.cdf(r)), level) for r in (1.0, 2.0)]  # noqa: E731
    tests = every_class_tests(build, 0.01, 10)
    share = 1 - tests[0].alpha / 0.01
    assert share == pytest.approx(UNION_SHARES[0]) and others_crossing(tests[0], 10) <= 0.01 * share
    assert [t.p0 for t in tests] == [float(norm.cdf(1.0)), float(norm.cdf(2.0))]

    def reckless(p0, alpha, max_n, *args):  # certifies at the first check whatever the counts: f = 1
        t = sequential_test(p0, alpha, max_n, *args)
        return dataclasses.replace(t, certify_min=np.zeros(max_n + 1, dtype=np.int64))

    with pytest.raises(ValueError, match=r"selection 'all' would spend more than half of alpha = 0.01 on the 2 other"):
        every_class_tests(lambda level: [reckless(0.9, level, 100, None, "two-sided", None, range(10, 101, 10))],
                          0.01, 3)
    monkeypatch.setattr("certify.sequential.sequential_test", reckless)
    g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), sigma=SIGMA, num_classes=3)
    with pytest.raises(ValueError, match="use selection 'argmax' or a larger first radius"):
        certify_at(g, torch.zeros(1, 2, 2), [0.25, 0.5], alpha=0.01, max_n=500, batch_size=100, selection="all")
    with pytest.raises(ValueError, match=r"selection must be one of \('argmax', 'all'\), got 'every'"):
        certify_at(g, torch.zeros(1, 2, 2), 0.5, alpha=0.01, max_n=500, batch_size=100, selection="every")


def test_three_class_oracle_false_claims_within_alpha_and_as_the_exact_computation_says():
    """400 runs on an image whose top class has rate 0.574 and the others 0.242 and 0.184 (exact). The grid's
    larger radius sits just above the true radius: claims there are false; their rate stays within alpha and
    matches the DP of the top class's test (the other classes add nothing measurable). No claim for another
    class, and none of the selection draws."""
    f, g, x = _three_bands(0.05)
    p = f.probabilities(f.mu(x), SIGMA)
    assert int(p.argmax()) == 1 and 0.55 < p[1] < 0.6
    true = SIGMA * float(norm.ppf(p[1]))
    alpha, trials, max_n = 0.05, 400, 2000
    radii = [0.5 * true, true * 1.0001]
    kwargs = dict(alpha=alpha, max_n=max_n, batch_size=2000, seed=3, step=10, growth=0.02, max_step=100,
                  mixture="one-sided", boundary="exact", selection="all")
    results = list(certify_at_many(g, [x] * trials, radii, **kwargs))
    assert all(r.n0 == 0 for r in results)
    assert all(r.cA == 1 for r in results if any(r.certified))
    false = np.mean([r.certified[1] for r in results])
    assert false <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    level = alpha * (1 - UNION_SHARES[0])
    test = sequential_test(float(norm.cdf(radii[1] / SIGMA)), level, max_n, alpha, "one-sided",
                           checks=check_schedule(max_n, 10, 0.02, 100), boundary="exact")
    predicted = test.operating_characteristics(float(p[1]))[0]
    assert abs(false - predicted) <= 4 * math.sqrt(predicted * (1 - predicted) / trials) + 1 / trials
    assert np.mean([r.certified[0] for r in results]) > 0.5  # the true half radius is found


def test_every_class_decides_as_argmax_does_without_the_selection_draws():
    """An image every draw agrees on: the same test samples and claims, none of the 51 selection draws. A
    hopeless one (votes split evenly): every class abstains and the most frequent test class is reported."""
    f, g, x = _three_bands(3.0)  # w.x far above b: class 2 on every draw
    kwargs = dict(alpha=0.001, max_n=20_000, batch_size=100, step=10, growth=0.02, boundary="ville")
    every, cohen = (certify_at(g, x, [0.25, 0.5], selection=s, **kwargs) for s in ("all", "argmax"))
    assert (every.cA, every.certified, every.n, every.decided_at) == (cohen.cA, cohen.certified, cohen.n,
                                                                      cohen.decided_at)
    assert every.cA == 2 and every.certified == (True, True) and (every.n0, cohen.n0) == (0, 51)
    f, g, x = _three_bands(0.1)  # rates about 0.21, 0.58, 0.21: r = 0.5 (p0 0.84) is out of reach
    c = certify_at(g, x, [0.5], selection="all", **kwargs)
    assert c.certified == (False,) and c.prediction == -1 and c.n < 20_000 and c.n0 == 0
    assert c.pA_lower == 0.0  # cA was picked from these samples: no bound on its rate is reported
