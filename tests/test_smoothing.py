"""certify/smoothing.py, the engine `Smoothed`: the noise drawn in fp32 from each image's own streams, batch by
batch, before the classifier; counts kept on the device; PREDICT's binomial test; the denoiser between the
noise and the classifier; the arguments refused; what the networks return checked (non-finite values, labels
out of range, outputs of the wrong shape, extra logit columns, a denoiser that leaves [0, 1]); sigma bounded;
eval mode for every sampling call; the fast path (channels_last, the batch size found by probing).
Certificates against oracles: tests/test_guarantees.py."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from certify import ABSTAIN, Smoothed, stream_seed
from certify.sequential import certify_anytime, certify_at
from certify.smoothing import NonFiniteOutput, PluginOutputError
from classifiers.remote import Adapter, RemoteClassifier
from denoisers import create_denoiser
from fixtures import Constant, ConstantDenoiser, MemoryBound, NaNAfter, Recording, linear_at_distance

X = torch.full((1, 2, 2), 0.5)
X16 = torch.full((1, 4, 4), 0.5)


# -- sampling: noise, streams, counts, PREDICT, the denoiser ---------------------------------------------------
def test_predict_binomial_test():
    sigma = 0.25
    f, x = linear_at_distance(0.5)  # pA = Phi(2) ~ 0.977
    assert Smoothed(f, sigma=sigma).predict(x, n=200, alpha=0.001, batch_size=64) == 1
    f, x = linear_at_distance(1e-6)  # on the boundary: a coin flip, predict must abstain (mostly)
    abstains = sum(Smoothed(f, sigma=sigma).predict(x, n=200, alpha=0.01, batch_size=64, index=i) == ABSTAIN
                   for i in range(50))
    assert abstains >= 45


def test_per_image_streams_are_independent_of_order_and_distinct():
    f, x = linear_at_distance(0.1)
    g = Smoothed(f, sigma=0.5)
    first = [g.certify_full(x, 10, 300, 0.001, 64, seed=5, index=i) for i in (3, 4)]
    again = [g.certify_full(x, 10, 300, 0.001, 64, seed=5, index=i) for i in (4, 3)][::-1]
    assert first == again
    assert len({stream_seed(5, i, s) for i in range(100) for s in ("selection", "estimation")}) == 200


@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16])
def test_noise_is_drawn_in_fp32_before_the_classifier(autocast):
    """The classifier sees x + sigma * N(0,1) in fp32 in [0,1] space (not clipped, not normalized),
    also when the networks run under autocast: noise drawn in bf16/fp16 would fail the resolution check."""
    recorder = Recording(num_classes=3)
    seen = recorder.seen
    x = torch.rand(1, 4, 4)
    g = Smoothed(recorder, sigma=0.5, autocast_dtype=autocast)
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
    f, x = linear_at_distance(0.2)
    g = Smoothed(f, sigma=0.25)
    counts = g.sample_counts(x, 1234, 100, torch.Generator().manual_seed(0))
    assert isinstance(counts, torch.Tensor) and int(counts.sum()) == 1234 and counts.shape == (2,)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigma=0.0), "sigma must be a positive"), (dict(sigma=-1.0), "sigma must be a positive"),
    (dict(num_classes=0), "num_classes must be"),
])
def test_smoothed_rejects_bad_construction(kwargs, match):
    f, _ = linear_at_distance(0.2)
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
    f, _ = linear_at_distance(0.2)
    args = dict(n0=10, n=10, alpha=0.01, batch_size=5) | kwargs
    with pytest.raises(ValueError, match=match):
        Smoothed(f, sigma=0.25).certify(x, **args)


def test_denoiser_sits_between_noise_and_classifier():
    black = ConstantDenoiser(0.0)  # a "denoiser" that maps everything to black
    f, x = linear_at_distance(-0.0)
    f.b = -1.0  # black image -> class 0
    c, _ = Smoothed(f, black, sigma=0.25).certify(torch.ones(1, 2, 2), n0=5, n=50, alpha=0.01, batch_size=25)
    assert c == 0 and black.sigmas and set(black.sigmas) == {0.25}


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 32, 32), (1, 3, 3), (3, 5, 5)])
def test_noise_is_the_streams_draws_batch_by_batch(shape):
    """README: noise is drawn batch by batch from the image's stream. Each batch size gives exactly the
    generator's draws in chunks of that size, and again on a rerun. (Whether two batch sizes give the same
    numbers is up to PyTorch's generator, which the README reports and this test does not assume.)"""
    recorder = Recording(num_classes=2)
    seen = recorder.seen
    g = Smoothed(recorder, sigma=0.5)
    for batch in (7, 50, 1000):
        for _ in range(2):
            seen.clear()
            g.sample_counts(torch.zeros(shape), 1000, batch, torch.Generator().manual_seed(0))
            stream = torch.Generator().manual_seed(0)
            draws = [torch.randn((min(batch, 1000 - at), *shape), generator=stream) for at in range(0, 1000, batch)]
            assert torch.equal(torch.cat(seen), 0.5 * torch.cat(draws)), batch


# -- what the networks return --------------------------------------------------------------------------------

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
    _refused_in_every_mode(g, X, NonFiniteOutput, "DnCNN")


def _refused_in_every_mode(g: Smoothed, x: torch.Tensor, error: type, match: str) -> None:
    """Cohen's CERTIFY and PREDICT, the sequential test and the anytime radius each raise ``error``."""
    with pytest.raises(error, match=match):
        g.certify(x, n0=10, n=100, alpha=0.001, batch_size=50)
    with pytest.raises(error, match=match):
        g.predict(x, n=100, alpha=0.001, batch_size=50)
    with pytest.raises(error, match=match):
        certify_at(g, x, [0.1], alpha=0.001, max_n=200, batch_size=50)
    with pytest.raises(error, match=match):
        certify_anytime(g, x, alpha=0.001, max_n=200, batch_size=50)


def test_hard_labels_out_of_range_are_refused():
    class Liar(nn.Module):
        def forward(self, x):
            return torch.full((len(x),), 7)

    with pytest.raises(NonFiniteOutput, match=r"outside \[0, 3\)"):
        Smoothed(Liar(), sigma=0.25, num_classes=3).certify(X, n0=5, n=20, alpha=0.01, batch_size=10)


def test_extra_logit_columns_are_refused_not_folded_into_the_last_class():
    # before: a network that only ever outputs class 2, smoothed with num_classes=2, was certified as class 1
    # at r = 0.375 (argmax 2 clamped to 1)
    g = Smoothed(Constant(columns=3, cls=2), sigma=0.25, num_classes=2)
    with pytest.raises(PluginOutputError, match=r"shape \(10, 3\).*\(10, 2\) for num_classes=2"):
        g.certify(X16, n0=10, n=100, alpha=0.001, batch_size=50)
    with pytest.raises(PluginOutputError):
        certify_at(g, X16, [0.1], alpha=0.001, max_n=100, batch_size=50)
    with pytest.raises(PluginOutputError):
        g.predict(X16, n=100, alpha=0.001, batch_size=50)


@pytest.mark.parametrize("out", [
    lambda x: torch.zeros(len(x), 2, 1),                    # logits with an extra dimension
    lambda x: torch.zeros(len(x) + 1, 2),                   # one row too many
    lambda x: torch.full((len(x),), 0.7),                   # a float vector is no hard label
    lambda x: torch.zeros(len(x), 1),                       # fewer columns than classes
    lambda x: (torch.zeros(len(x), 2),),                    # a tuple (a model's (logits, aux))
    lambda x: torch.zeros(len(x), 2).numpy(),               # an array of the right shape
    lambda x: torch.ones(len(x), dtype=torch.bool),         # bool labels would pass for class 1
    lambda x: torch.zeros(len(x), 2, dtype=torch.bool),     # bool logits
    lambda x: torch.zeros(len(x), 2, dtype=torch.complex64),  # complex logits
], ids=["3d", "rows", "float-labels", "fewer-columns", "tuple", "numpy", "bool-labels", "bool-logits", "complex"])
def test_outputs_of_the_wrong_shape_are_refused(out):
    class Wrong(nn.Module):
        def forward(self, x):
            return out(x)

    with pytest.raises(PluginOutputError, match="expected logits"):
        Smoothed(Wrong(), sigma=0.25, num_classes=2).certify(X16, n0=10, n=20, alpha=0.01, batch_size=10)


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


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1.5, -0.2])
def test_a_broken_denoiser_in_front_of_a_remote_api_is_refused_in_every_mode(value):
    # before: NaN images were sent as black PNGs, every one got the same label, and every image was certified
    # at the largest radius n allows
    api = RemoteClassifier(PixelAPI(), num_classes=4)
    g = Smoothed(api, ConstantDenoiser(value), sigma=0.25)
    _refused_in_every_mode(g, torch.full((3, 4, 4), 0.8), NonFiniteOutput, "outside")


@pytest.mark.parametrize("out, got", [
    (lambda noisy: noisy[..., :2, :2].clamp(0, 1), r"torch.float32 images of shape \(10, 1, 2, 2\)"),
    (lambda noisy: [noisy.clamp(0, 1)], "a list"),
    (lambda noisy: noisy.clamp(0, 1).numpy(), "a ndarray"),
    (lambda noisy: noisy > 0.5, r"torch.bool images of shape \(10, 1, 4, 4\)"),
], ids=["shrinks", "list", "numpy", "bool"])
def test_a_denoiser_of_the_wrong_shape_or_type_is_refused(out, got):
    class Wrong(nn.Module):
        def forward(self, noisy, sigma):
            return out(noisy)

    g = Smoothed(nn.Sequential(nn.Flatten(), nn.LazyLinear(2)), Wrong(), sigma=0.25, num_classes=2)
    with pytest.raises(PluginOutputError, match=rf"denoiser.* returned {got} for noisy images of shape \(10, 1, 4, 4\)"):
        g.certify(X16, n0=10, n=20, alpha=0.01, batch_size=10)


def test_the_identity_denoiser_passes_the_noise_through_unchecked():
    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    g = Smoothed(f, create_denoiser("none"), sigma=1.0, num_classes=2)  # noisy values far outside [0, 1]
    assert g.certify(X16, n0=10, n=50, alpha=0.01, batch_size=25)[0] in (-1, 0, 1)


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
        g.sample_batch([(X16[:1], 8, torch.Generator().manual_seed(0))])
    assert torch.equal(net.bn.running_mean, before[0]) and torch.equal(net.bn.num_batches_tracked, before[1])
    assert net.training and net.bn.training


# -- sigma, eval mode ------------------------------------------------------------------------------------------
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


# -- the fast path: channels_last, the batch size found by probing (torch.compile: tests/test_compile.py) ----

class Conv(nn.Module):
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 3))
        self.formats = []

    def forward(self, x):
        self.formats.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.net(x) * 100  # wide margins: equal arithmetic up to rounding gives equal votes


def test_channels_last_gives_the_same_certificate_and_nhwc_batches():
    x = torch.rand(3, 8, 8)
    plain = Smoothed(Conv(), sigma=0.25).certify_full(x, 20, 200, 0.001, 50, seed=1)
    f = Conv()
    fast = Smoothed(f, sigma=0.25, channels_last=True)
    assert fast.certify_full(x, 20, 200, 0.001, 50, seed=1) == plain
    assert all(f.formats) and f.net[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_find_batch_size_stops_at_memory_and_limits():
    f = MemoryBound(capacity=300)
    g = Smoothed(f, sigma=0.25)
    assert g.find_batch_size((1, 4, 4), limit=10_000) == 256
    assert f.probed == [16, 32, 64, 128, 256, 512]
    assert g.find_batch_size((1, 4, 4), limit=100) == 64
    assert g.find_batch_size((1, 4, 4), limit=10_000, cpu_limit=128) == 128
    with pytest.raises(RuntimeError, match="not even a batch of 16"):
        Smoothed(MemoryBound(capacity=8), sigma=0.25).find_batch_size((1, 4, 4), limit=1000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_no_host_sync_inside_the_sampling_loop():
    g = Smoothed(Conv().cuda(), sigma=0.25, autocast_dtype=torch.bfloat16, channels_last=True)
    x = torch.rand(3, 8, 8, device="cuda")
    gen = g.generator(0, 0, "estimation")
    g.sample_counts(x, 100, 50, gen)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        g.sample_counts(x, 1000, 100, gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
