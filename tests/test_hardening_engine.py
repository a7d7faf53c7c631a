"""Issue 13, engine items: non-finite outputs are refused, sigma is bounded, certification runs in eval mode."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from certify import Smoothed
from certify.sequential import certify_anytime, certify_at
from certify.smoothing import NonFiniteOutput
from denoisers import create_denoiser


class NaNAfter(nn.Module):
    """Logits that turn NaN once ``after`` images have been classified (a network that breaks mid-run)."""

    num_classes = 3

    def __init__(self, after: int = 0) -> None:
        super().__init__()
        self.after, self.seen = after, 0
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.flatten(1))
        start, self.seen = self.seen, self.seen + len(x)
        rows = torch.arange(start, start + len(x)) >= self.after
        return torch.where(rows[:, None], torch.full_like(out, float("nan")), out)


X = torch.full((1, 2, 2), 0.5)


def test_nan_logits_are_refused_not_counted_as_class_zero():
    # argmax of NaN is 0: before, every image read "class 0" with a positive radius.
    g = Smoothed(NaNAfter(after=0), sigma=0.25)
    with pytest.raises(NonFiniteOutput, match=r"NaNAfter.*non-finite.*batch 0"):
        g.certify(X, n0=10, n=100, alpha=0.001, batch_size=50)


def test_the_first_bad_batch_is_named():
    g = Smoothed(NaNAfter(after=10 + 120), sigma=0.25)  # n0 = 10 fine, then batch 2 of the estimation (100..149)
    with pytest.raises(NonFiniteOutput, match=r"batch 2 \(noise samples 100..149\)"):
        g.certify(X, n0=10, n=300, alpha=0.001, batch_size=50)


def test_nan_denoiser_is_refused_in_every_mode():
    den = create_denoiser("dncnn", in_channels=1, depth=3, features=4)
    with torch.no_grad():
        for p in den.parameters():
            p.fill_(float("nan"))
    g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), den, sigma=0.25, num_classes=3)
    with pytest.raises(NonFiniteOutput, match="DnCNN"):
        g.certify(X, n0=10, n=100, alpha=0.001, batch_size=50)
    with pytest.raises(NonFiniteOutput):
        g.predict(X, n=100, alpha=0.001, batch_size=50)
    with pytest.raises(NonFiniteOutput):
        certify_at(g, X, [0.1], alpha=0.001, max_n=200, batch_size=50)
    with pytest.raises(NonFiniteOutput):
        certify_anytime(g, X, alpha=0.001, max_n=200, batch_size=50)


def test_hard_labels_out_of_range_are_refused():
    class Liar(nn.Module):
        def forward(self, x):
            return torch.full((len(x),), 7)

    with pytest.raises(NonFiniteOutput, match=r"outside \[0, 3\)"):
        Smoothed(Liar(), sigma=0.25, num_classes=3).certify(X, n0=5, n=20, alpha=0.01, batch_size=10)


@pytest.mark.parametrize("sigma", [1e39, float("inf"), float("nan"), 101.0, -0.1, 0.0, True])
def test_sigma_is_bounded(sigma):
    with pytest.raises(ValueError, match="sigma"):
        Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=sigma, num_classes=2)


def test_sigma_far_outside_pixel_units_warns(caplog):
    with caplog.at_level(logging.WARNING):
        Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=25, num_classes=2)
    assert "far outside [0,1] pixel units" in caplog.text


def _dncnn_pipeline():
    torch.manual_seed(0)
    den = create_denoiser("dncnn", in_channels=1, depth=4, features=8)
    with torch.no_grad():  # a non-identity denoiser whose BatchNorm matters
        for m in den.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.3)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Dropout(0.5))
    return Smoothed(clf, den, sigma=0.5, num_classes=10)


def test_certification_runs_in_eval_mode_and_restores_each_module():
    g = _dncnn_pipeline()
    x = torch.rand(1, 8, 8)
    g.eval()
    reference = g.certify_full(x, n0=20, n=200, alpha=0.01, batch_size=50, seed=3)
    g.train()
    g.classifier[0].eval()  # a mixed state must come back as it was
    modes = {name: m.training for name, m in g.named_modules()}
    stats = {k: v.clone() for k, v in g.denoiser.state_dict().items()}
    for run in (lambda: g.certify_full(x, n0=20, n=200, alpha=0.01, batch_size=50, seed=3),
                lambda: g.predict_full(x, n=200, alpha=0.01, batch_size=50, seed=3),
                lambda: certify_at(g, x, [0.1], alpha=0.01, max_n=200, batch_size=50, seed=3),
                lambda: g.find_batch_size((1, 8, 8), limit=64)):
        result = run()
        assert {name: m.training for name, m in g.named_modules()} == modes
        for k, v in g.denoiser.state_dict().items():  # BatchNorm statistics did not drift
            assert torch.equal(v, stats[k]), k
        if type(result) is type(reference):
            assert result == reference  # the same counts as in eval mode
