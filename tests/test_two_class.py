"""The two-class bound (Cohen et al. 2019, Theorem 1 with the runner-up): valid on a three-class linear
oracle whose class probabilities under noise are exact, larger where the votes spread."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm
from torch import nn

from certify.cli import main
from certify.smoothing import Smoothed
from certify.stats import certificate, clopper_pearson_upper, two_class_bounds
from oracles import theorem1_radius

SIGMA = 0.5


class ThreeBands(nn.Module):
    """f(x) = 0, 1 or 2 as z = w.x falls below a, between a and b, or above b (w a unit vector): under
    N(0, sigma^2 I) noise z ~ N(w.x, sigma^2), so every class probability is exact."""

    def __init__(self, w: torch.Tensor, a: float, b: float) -> None:
        super().__init__()
        self.w, self.a, self.b = w, a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w
        cls = (z >= self.a).long() + (z >= self.b).long()
        return nn.functional.one_hot(cls, 3).float() * 10

    def probabilities(self, x: torch.Tensor, sigma: float) -> np.ndarray:
        mu = float(x.flatten() @ self.w)
        lo, hi = norm.cdf((self.a - mu) / sigma), norm.cdf((self.b - mu) / sigma)
        return np.array([lo, hi - lo, 1 - hi])


def _oracle_images(count: int, seed: int) -> tuple[ThreeBands, Smoothed, list[torch.Tensor]]:
    """The oracle with bands at -0.25 and 0.25 along a random unit w, and images spread across the bands."""
    torch.manual_seed(seed)
    w = torch.randn(16)
    w /= w.norm()
    f = ThreeBands(w, a=-0.25, b=0.25)
    xs = [(0.5 + float(torch.empty(()).uniform_(-0.6, 0.6)) * w).view(1, 4, 4) for _ in range(count)]
    return f, Smoothed(f, sigma=SIGMA, num_classes=3), xs


def _true_radius(p: np.ndarray) -> tuple[int, float]:
    """The top class and Theorem 1's radius at the exact probabilities (`oracles`, not the code under test)."""
    order = np.argsort(p)[::-1]
    return int(order[0]), theorem1_radius(SIGMA, float(p[order[0]]), float(p[order[1]]))


@pytest.mark.parametrize("p", [(0.3, 0.5, 0.2), (0.05, 0.6, 0.35), (0.25, 0.4, 0.35)])
@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_two_class_radius_stays_within_its_true_value_at_rate_alpha(p, alpha):
    """Multinomial trials (10,000 at alpha 0.05, 3,000 at 0.001): a certificate is wrong when it names
    another class than the top one or a radius above the exact two-class radius; that happens at rate
    <= alpha (up to the binomial 99.9% quantile), and point estimates in place of the bounds fail it."""
    p = np.array(p)
    top, true = _true_radius(p)
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


def test_engine_three_class_oracle_two_class_is_valid_and_certifies_spread_votes():
    """Through Smoothed.certify_full on real noise: 2,000 images of a three-class linear oracle, each
    with its exact two-class radius; the one-class bound abstains where the top class has < 1/2."""
    f, g, xs = _oracle_images(2000, seed=0)
    alpha, trials = 0.01, len(xs)
    wrong = gained = 0
    for i, x in enumerate(xs):
        top, true = _true_radius(f.probabilities(x, SIGMA))
        c = g.certify_full(x, n0=50, n=500, alpha=alpha, batch_size=550, index=i, bound="two-class")
        wrong += c.prediction != -1 and (c.prediction != top or c.radius > true)
        one = g.certify_full(x, n0=50, n=500, alpha=alpha, batch_size=550, index=i)
        gained += c.radius > one.radius
        assert c.pB_upper is not None and c.pA_lower <= 1 and one.pB_upper is None
    assert wrong <= binom.ppf(0.999, trials, alpha), wrong
    assert gained > trials / 10  # the middle band spreads votes: the runner-up bound pays off often


def test_anytime_two_class_on_the_oracle_is_valid_at_its_stopping_time():
    """The confidence-sequence form (anytime mode): 1,000 images of the three-class oracle, stopped by the
    anytime rule; wrong certificates stay at rate <= alpha and the spread votes still gain radius."""
    from certify.sequential import certify_anytime_many

    f, g, xs = _oracle_images(1000, seed=1)
    alpha, trials = 0.01, len(xs)
    two = list(certify_anytime_many(g, xs, alpha, max_n=2000, batch_size=2000, step=250, bound="two-class"))
    one = list(certify_anytime_many(g, xs, alpha, max_n=2000, batch_size=2000, step=250))
    wrong = 0
    for x, c in zip(xs, two):
        top, true = _true_radius(f.probabilities(x, SIGMA))
        wrong += c.prediction != -1 and (c.prediction != top or c.radius > true)
    assert wrong <= binom.ppf(0.999, trials, alpha), wrong
    assert sum(c.radius > o.radius for c, o in zip(two, one)) > trials / 10
    assert all(c.pB_upper is not None for c in two) and all(o.pB_upper is None for o in one)


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


def test_cli_two_class_column_and_refusals(tmp_path, capsys):
    args = ["certify", "--classifier", "small-cnn.mnist5k", "--dataset", "mnist5k:test", "--sigma", "0.5",
            "--n0", "20", "--n", "200", "--batch", "220", "--skip", "250", "--max", "1000", "--quiet"]
    out = tmp_path / "t.tsv"
    assert main([*args, "--bound", "two-class", "--out", str(out)]) == 0
    lines = [l.split("\t") for l in out.read_text().splitlines()]
    assert lines[0][-2:] == ["pB_upper", "source"] and len(lines) == 5 and all(0 <= float(l[-2]) <= 1 for l in lines[1:])
    assert main([*args, "--out", str(out)]) == 2  # resuming with the other bound is refused
    assert "bound" in capsys.readouterr().err
    assert main([*args, "--bound", "one-class", "--out", str(tmp_path / "o.tsv")]) == 0
    assert (tmp_path / "o.tsv").read_text().splitlines()[0].split("\t")[-2:] == ["n0", "source"]  # no pB_upper
    assert main([*args, "--mode", "sequential", "--radii", "0.25", "--bound", "two-class", "--out", str(tmp_path / "s.tsv")]) == 2
    err = capsys.readouterr().err
    assert "bound is an option of the anytime, certify modes, not of 'sequential'" in err and "--mode anytime --bound two-class gives" in err
    assert main([*args, "--mode", "anytime", "--bound", "two-class", "--out", str(tmp_path / "a.tsv")]) == 0
    assert (tmp_path / "a.tsv").read_text().splitlines()[0].split("\t")[-2] == "pB_upper"
