"""The certification engine against exact oracles: Clopper-Pearson, the linear classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from certify import ABSTAIN, Smoothed, clopper_pearson_lower, max_radius, stream_seed


class Linear(nn.Module):
    """Binary linear classifier f(x) = [w.x + b > 0] on flattened images; exact smoothed certificate."""

    num_classes = 2

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w.flatten())
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ self.w + self.b > 0).long()

    def distance(self, x: torch.Tensor) -> float:
        return abs(float(x.flatten() @ self.w) + self.b) / float(self.w.norm())


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


def _linear_setup(distance: float, sigma: float):
    w = torch.tensor([[[0.6, -0.8], [0.0, 0.0]]])  # unit norm
    x = torch.full((1, 2, 2), 0.5)
    b = distance - float((x.flatten() @ w.flatten()))  # w.x + b = distance > 0: class 1
    f = Linear(w, b)
    assert f.distance(x) == pytest.approx(distance)
    return f, x


@pytest.mark.parametrize("alpha,trials", [(0.2, 2000), (0.001, 2000)])
def test_linear_oracle_false_certificates_within_alpha(alpha, trials):
    """A radius above the true distance is a false certificate; it may happen with probability <= alpha.

    Allowance: the count of false certificates over independent trials is Binomial(trials, q) with
    q <= alpha; we accept up to alpha * trials + 4 standard deviations + 1 (a false failure rate
    below 1e-4), which a bound that ignored alpha (or used the point estimate) would exceed by far.
    """
    sigma = 0.5
    pA = 0.9
    f, x = _linear_setup(sigma * norm.ppf(pA), sigma)
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
    f, x = _linear_setup(0.3, sigma)
    g = Smoothed(f, sigma=sigma)
    radii = [g.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=50_000, seed=3, index=i)[1] for i in range(5)]
    assert all(r <= 0.3 for r in radii)
    assert np.mean(radii) == pytest.approx(0.3, rel=0.03)


def test_predict_binomial_test():
    sigma = 0.25
    f, x = _linear_setup(0.5, sigma)  # pA = Phi(2) ~ 0.977
    assert Smoothed(f, sigma=sigma).predict(x, n=200, alpha=0.001, batch_size=64) == 1
    f, x = _linear_setup(1e-6, sigma)  # on the boundary: a coin flip, predict must abstain (mostly)
    abstains = sum(Smoothed(f, sigma=sigma).predict(x, n=200, alpha=0.01, batch_size=64, index=i) == ABSTAIN
                   for i in range(50))
    assert abstains >= 45


def test_per_image_streams_are_independent_of_order_and_distinct():
    f, x = _linear_setup(0.1, 0.5)
    g = Smoothed(f, sigma=0.5)
    first = [g.certify_full(x, 10, 300, 0.001, 64, seed=5, index=i) for i in (3, 4)]
    again = [g.certify_full(x, 10, 300, 0.001, 64, seed=5, index=i) for i in (4, 3)][::-1]
    assert first == again
    assert len({stream_seed(5, i, s) for i in range(100) for s in ("selection", "estimation")}) == 200


@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16])
def test_noise_is_drawn_in_fp32_before_the_classifier(autocast):
    """The classifier sees x + sigma * N(0,1) in fp32 in [0,1] space (not clipped, not normalized),
    also when the networks run under autocast: noise drawn in bf16/fp16 would fail the resolution check."""
    seen = []

    class Recorder(nn.Module):
        num_classes = 3

        def forward(self, images):
            seen.append(images.clone())
            return torch.zeros(len(images), 3)

    x = torch.rand(1, 4, 4)
    g = Smoothed(Recorder(), sigma=0.5, autocast_dtype=autocast)
    g.sample_counts(g.check_input(x), 4000, 4000, torch.Generator().manual_seed(0))
    batch = seen[0]
    assert batch.dtype == torch.float32
    noise = batch - x
    assert noise.mean().abs() < 0.02 and noise.std() == pytest.approx(0.5, rel=0.02)
    assert batch.min() < 0 and batch.max() > 1  # not clipped

    # On a black image with sigma = 0.5 the batch is exactly 0.5 * N(0, 1): its values must carry
    # fp32 resolution, which noise drawn in a 16-bit type (then upcast) cannot.
    seen.clear()
    g.sample_counts(torch.zeros(1, 4, 4), 4000, 4000, torch.Generator().manual_seed(0))
    for low in (torch.bfloat16, torch.float16):
        representable = seen[0].to(low).float() == seen[0]
        assert representable.float().mean() < 0.1, f"noise looks drawn in {low}"


def test_counts_stay_on_device_and_sum_to_n():
    f, x = _linear_setup(0.2, 0.25)
    g = Smoothed(f, sigma=0.25)
    counts = g.sample_counts(x, 1234, 100, torch.Generator().manual_seed(0))
    assert isinstance(counts, torch.Tensor) and int(counts.sum()) == 1234 and counts.shape == (2,)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigma=0.0), "sigma must be a positive"), (dict(sigma=-1.0), "sigma must be a positive"),
    (dict(num_classes=0), "num_classes must be"),
])
def test_smoothed_rejects_bad_construction(kwargs, match):
    f, _ = _linear_setup(0.2, 0.25)
    with pytest.raises(ValueError, match=match):
        Smoothed(f, **{"sigma": 0.25, **kwargs})


@pytest.mark.parametrize("x,kwargs,match", [
    (torch.full((1, 2, 2), 1.5), {}, r"values must lie in \[0, 1\], got range \[1.5"),
    (torch.full((1, 2, 2), -0.1), {}, r"values must lie in \[0, 1\]"),
    (torch.zeros(2, 2), {}, r"shape \(C, H, W\), got \(2, 2\)"),
    (torch.zeros(1, 2, 2), dict(alpha=0.0), "alpha must lie in"),
    (torch.zeros(1, 2, 2), dict(alpha=1.0), "alpha must lie in"),
    (torch.zeros(1, 2, 2), dict(n0=0), "n0 must be an int >= 1"),
    (torch.zeros(1, 2, 2), dict(n=0), "n must be an int >= 1"),
    (torch.zeros(1, 2, 2), dict(batch_size=0), "batch_size must be an int >= 1"),
])
def test_certify_rejects_bad_input(x, kwargs, match):
    f, _ = _linear_setup(0.2, 0.25)
    args = dict(n0=10, n=10, alpha=0.01, batch_size=5) | kwargs
    with pytest.raises(ValueError, match=match):
        Smoothed(f, sigma=0.25).certify(x, **args)


def test_denoiser_sits_between_noise_and_classifier():
    calls = []

    class Halve(nn.Module):
        def forward(self, noisy, sigma):
            calls.append(sigma)
            return torch.zeros_like(noisy)  # a "denoiser" that maps everything to black

    f, x = _linear_setup(-0.0, 0.25)
    f.b = -1.0  # black image -> class 0
    c, _ = Smoothed(f, Halve(), sigma=0.25).certify(torch.ones(1, 2, 2), n0=5, n=50, alpha=0.01, batch_size=25)
    assert c == 0 and calls and set(calls) == {0.25}


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 32, 32), (1, 3, 3), (3, 5, 5)])
def test_noise_is_the_streams_draws_batch_by_batch(shape):
    """README: noise is drawn batch by batch from the image's stream. Each batch size gives exactly the
    generator's draws in chunks of that size, and again on a rerun. (Whether two batch sizes give the same
    numbers is up to PyTorch's generator, which the README reports and this test does not assume.)"""
    seen = []

    class Recorder(nn.Module):
        num_classes = 2

        def forward(self, images):
            seen.append(images.clone())
            return torch.zeros(len(images), 2)

    g = Smoothed(Recorder(), sigma=0.5)
    for batch in (7, 50, 1000):
        for _ in range(2):
            seen.clear()
            g.sample_counts(torch.zeros(shape), 1000, batch, torch.Generator().manual_seed(0))
            stream = torch.Generator().manual_seed(0)
            draws = [torch.randn((min(batch, 1000 - at), *shape), generator=stream) for at in range(0, 1000, batch)]
            assert torch.equal(torch.cat(seen), 0.5 * torch.cat(draws)), batch
