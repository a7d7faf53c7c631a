"""The engine's checks on what the networks return (issue 25, items 1, 2 and 10): a classifier with more output
columns than classes, a denoiser that returns NaN or leaves [0, 1] in front of a hard-label API, a plugin of the
wrong shape, and the public sampling calls in eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from certify import Smoothed
from certify.attack import attack_full
from certify.sequential import certify_anytime, certify_at
from certify.smoothing import NonFiniteOutput, PluginOutputError
from classifiers.remote import Adapter, RemoteClassifier

X = torch.full((1, 4, 4), 0.5)


class Constant(nn.Module):
    """Logits with ``columns`` columns that always pick class ``cls``."""

    def __init__(self, columns: int, cls: int) -> None:
        super().__init__()
        self.columns, self.cls = columns, cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(x),), self.cls), self.columns).float() * 10 + 0 * x.flatten(1)[:, :1]


def test_extra_logit_columns_are_refused_not_folded_into_the_last_class():
    # before: a network that only ever outputs class 2, smoothed with num_classes=2, was certified as class 1
    # at r = 0.375 (argmax 2 clamped to 1)
    g = Smoothed(Constant(columns=3, cls=2), sigma=0.25, num_classes=2)
    with pytest.raises(PluginOutputError, match=r"shape \(10, 3\).*\(10, 2\) for num_classes=2"):
        g.certify(X, n0=10, n=100, alpha=0.001, batch_size=50)
    with pytest.raises(PluginOutputError):
        certify_at(g, X, [0.1], alpha=0.001, max_n=100, batch_size=50)
    with pytest.raises(PluginOutputError):
        g.predict(X, n=100, alpha=0.001, batch_size=50)


@pytest.mark.parametrize("out", [
    lambda x: torch.zeros(len(x), 2, 1),                    # logits with an extra dimension
    lambda x: torch.zeros(len(x) + 1, 2),                   # one row too many
    lambda x: torch.full((len(x),), 0.7),                   # a float vector is no hard label
    lambda x: torch.zeros(len(x), 1),                       # fewer columns than classes
], ids=["3d", "rows", "float-labels", "fewer-columns"])
def test_outputs_of_the_wrong_shape_are_refused(out):
    class Wrong(nn.Module):
        def forward(self, x):
            return out(x)

    with pytest.raises(PluginOutputError, match="expected logits"):
        Smoothed(Wrong(), sigma=0.25, num_classes=2).certify(X, n0=10, n=20, alpha=0.01, batch_size=10)


class PixelAPI(Adapter):
    """A fake vision API: the label is whether the PNG it receives is mostly dark (a black image is 'dark')."""

    vendor = "fake"

    def api_id(self) -> str:
        return "fake"

    def describe(self) -> dict:
        return {"vendor": "fake"}

    def query(self, png: bytes, timeout: float):
        from classifiers.remote import decode_png

        return [("dark" if float(decode_png(png).mean()) < 0.5 else "light", 1.0)]


class Broken(nn.Module):
    """A denoiser that returns ``value`` everywhere (NaN weights, or a plugin that forgot to clamp)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.full_like(noisy, self.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1.5, -0.2])
def test_a_broken_denoiser_in_front_of_a_remote_api_is_refused_in_every_mode(value):
    # before: NaN images were sent as black PNGs, every one got the same label, and every image was certified
    # at the largest radius n allows
    api = RemoteClassifier(PixelAPI(), num_classes=4)
    g = Smoothed(api, Broken(value), sigma=0.25)
    x = torch.full((3, 4, 4), 0.8)
    with pytest.raises(NonFiniteOutput, match="outside"):
        g.certify(x, n0=10, n=100, alpha=0.001, batch_size=50)
    with pytest.raises(NonFiniteOutput):
        g.predict(x, n=100, alpha=0.001, batch_size=50)
    with pytest.raises(NonFiniteOutput):
        certify_at(g, x, [0.1], alpha=0.001, max_n=100, batch_size=50)
    with pytest.raises(NonFiniteOutput):
        certify_anytime(g, x, alpha=0.001, max_n=100, batch_size=50)


def test_a_broken_denoiser_is_refused_by_the_attack_too():
    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    g = Smoothed(f, Broken(2.0), sigma=0.25, num_classes=2)
    with pytest.raises(NonFiniteOutput):
        attack_full(g, X, 0, eps=[0.25], n=20, alpha=0.01, batch_size=10, steps=1, m=2)


def test_a_denoiser_of_the_wrong_shape_is_refused():
    class Shrinks(nn.Module):
        def forward(self, noisy, sigma):
            return noisy[..., :2, :2].clamp(0, 1)

    g = Smoothed(nn.Sequential(nn.Flatten(), nn.LazyLinear(2)), Shrinks(), sigma=0.25, num_classes=2)
    with pytest.raises(PluginOutputError, match=r"denoiser.*shape \(10, 1, 2, 2\).*\(10, 1, 4, 4\)"):
        g.certify(X, n0=10, n=20, alpha=0.01, batch_size=10)


def test_the_identity_denoiser_passes_the_noise_through_unchecked():
    from denoisers import create_denoiser

    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    g = Smoothed(f, create_denoiser("none"), sigma=1.0, num_classes=2)  # noisy values far outside [0, 1]
    assert g.certify(X, n0=10, n=50, alpha=0.01, batch_size=25)[0] in (-1, 0, 1)


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.lin = nn.Linear(16, 2)

    def forward(self, x):
        return self.lin(self.bn(x).flatten(1))


@pytest.mark.parametrize("call", ["base_predict", "sample_batch"])
def test_public_sampling_calls_run_in_eval_mode_and_restore_train_mode(call):
    # before: both ran the networks in train mode and updated BatchNorm's running statistics
    net = BatchNormNet().train()
    g = Smoothed(net, sigma=0.25, num_classes=2)
    before = net.bn.running_mean.clone(), net.bn.num_batches_tracked.clone()
    noisy = torch.rand(8, 1, 4, 4) * 5
    if call == "base_predict":
        g.base_predict(noisy)
    else:
        g.sample_batch([(X[:1], 8, torch.Generator().manual_seed(0))])
    assert torch.equal(net.bn.running_mean, before[0]) and torch.equal(net.bn.num_batches_tracked, before[1])
    assert net.training and net.bn.training
