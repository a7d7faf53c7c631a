"""The ``ddpm`` denoiser: timestep rule, the one-shot oracle, loading both layouts, the shipped MNIST DDPM."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from denoisers import create_denoiser, list_denoisers
from denoisers.ddpm import DDPMDenoiser, timestep_for_sigma

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "denoisers" / "pretrained" / "ddpm.mnist5k"
CLASSIFIER = Path(__file__).resolve().parents[1] / "classifiers" / "pretrained" / "small-cnn.mnist5k"


# --- an independent schedule and timestep rule, written from the formulas -------------------------------
def _abar_numpy(kind: str, steps: int = 1000) -> np.ndarray:
    if kind == "linear":
        betas = np.linspace(1e-4, 0.02, steps, dtype=np.float64)
    else:  # Nichol & Dhariwal's cosine schedule: alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)])
    return np.cumprod(1.0 - betas)


def _brute_force(abar: np.ndarray, sigma: float, rule: str) -> int:
    best, best_gap = None, float("inf")
    for t, a in enumerate(abar):
        ratio = math.sqrt((1 - a) / a)
        if rule == "first" and ratio >= 2 * sigma:
            return t
        if rule == "nearest" and abs(ratio - 2 * sigma) < best_gap:
            best, best_gap = t, abs(ratio - 2 * sigma)
    return best


def _denoiser_for(scheduler, **kwargs) -> DDPMDenoiser:
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(4, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, add_attention=False)
    return DDPMDenoiser(unet, scheduler, **kwargs)


def test_first_rule_on_the_linear_schedule_gives_carlinis_timesteps():
    den = _denoiser_for(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02))
    assert [den.timestep(s) for s in (0.25, 0.5, 1.0)] == [145, 259, 396]
    # the model is told at least sigma, and not much more
    for s in (0.25, 0.5, 1.0):
        assert s <= den.implied_sigma(s) < 1.01 * s


@pytest.mark.parametrize("kind", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("rule", ["first", "nearest"])
def test_timestep_rules_match_an_independent_computation(kind, rule):
    den = _denoiser_for(DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind), timestep_rule=rule)
    abar = _abar_numpy(kind)
    np.testing.assert_allclose(den.alphas_cumprod.double().numpy(), abar, rtol=1e-4)
    for sigma in (0.05, 0.12, 0.25, 0.37, 0.5, 0.75, 1.0, 2.0):
        assert den.timestep(sigma) == _brute_force(abar, sigma, rule), (kind, rule, sigma)


def test_timestep_rule_rejects_bad_input():
    abar = _abar_numpy("linear")
    with pytest.raises(ValueError, match="sigma"):
        timestep_for_sigma(abar, 0.0)
    with pytest.raises(ValueError, match="only reaches"):
        timestep_for_sigma(abar, 90.0)  # within the rule of sigma, beyond the schedule (pixel 79)
    with pytest.raises(ValueError, match="rule"):
        timestep_for_sigma(abar, 0.5, rule="last")


# --- the oracle: a stand-in model that knows the clean image and the noise the engine added -------------
class TrueTarget(nn.Module):
    """Returns the exact target of its prediction type for the clean image and the engine's noise.

    It never looks at x_t: eps is the engine's pixel noise d standardized (d / sigma), so the estimate is
    right only if the denoiser put exactly sqrt(abar) * 2 * d into x_t, i.e. got the 2 sigma scaling right.
    """

    def __init__(self, x0, d, sigma, abar, prediction_type, channels, learned_variance=False):
        super().__init__()
        self.x0, self.eps, self.abar, self.kind = x0, d / sigma, abar, prediction_type
        self.learned_variance = learned_variance
        self.config = {"in_channels": channels, "out_channels": channels * (2 if learned_variance else 1),
                       "sample_size": x0.shape[-1]}
        self.calls: list[int] = []
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        assert t.shape == (x_t.shape[0],) and t.dtype == torch.long
        self.calls.append(int(t[0]))
        a = self.abar[int(t[0])]
        x0 = self.x0.expand_as(x_t)
        target = {"epsilon": self.eps,
                  "v_prediction": math.sqrt(a) * self.eps - math.sqrt(1 - a) * x0,
                  "sample": x0}[self.kind]
        if self.learned_variance:
            target = torch.cat([target, torch.full_like(target, 7.0)], dim=1)
        return SimpleNamespace(sample=target)


@pytest.mark.parametrize("learned_variance", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_oracle_one_shot_returns_the_clean_image(prediction_type, learned_variance):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type,
                              variance_type="learned_range" if learned_variance else "fixed_small")
    abar = scheduler.alphas_cumprod.float().double().numpy()
    t_star = 259
    sigma = float(math.sqrt((1 - abar[t_star]) / abar[t_star]) / 2)  # the schedule hits 2 sigma exactly here
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(3, 2, 12, 12, generator=g)
    d = sigma * torch.randn(clean.shape, generator=g)  # the engine's noise: exactly sigma, in pixel space
    model = TrueTarget(2 * clean - 1, d, sigma, abar, prediction_type, channels=2, learned_variance=learned_variance)
    den = DDPMDenoiser(model, scheduler)
    with torch.inference_mode():
        out = den(clean + d, sigma)
    assert model.calls == [t_star]
    torch.testing.assert_close(out, clean, atol=2e-5, rtol=0)
    # the model is told exactly sigma here; with the default rule a slightly larger sigma maps one step later
    assert den.implied_sigma(sigma) == pytest.approx(sigma, rel=1e-6)


def test_oracle_detects_a_wrong_noise_scale():
    """Control: the same oracle with the noise at sigma but t* chosen for 2 sigma does not return x."""
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    abar = scheduler.alphas_cumprod.double().numpy()
    sigma = float(math.sqrt((1 - abar[259]) / abar[259]) / 2)
    clean = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    d = sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    model = TrueTarget(2 * clean - 1, d, sigma, abar, "epsilon", channels=1)
    out = DDPMDenoiser(model, scheduler)(clean + d, 2 * sigma)
    assert (out - clean).abs().max() > 0.05


# --- a real tiny UNet2DModel through the registry ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)


@pytest.mark.parametrize("layout", ["unet_folder", "pipeline"])
def test_tiny_unet_loads_by_spec_and_denoises(tmp_path, tiny_unet, layout):
    if layout == "unet_folder":
        tiny_unet.save_pretrained(tmp_path)
        DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction").save_pretrained(tmp_path)
    else:
        tiny_unet.save_pretrained(tmp_path / "unet")
        DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction").save_pretrained(tmp_path / "scheduler")
    den = create_denoiser(f"ddpm:{tmp_path}")
    assert isinstance(den, DDPMDenoiser) and den.prediction_type == "v_prediction"
    noisy = torch.rand(5, 3, 16, 16) + 0.25 * torch.randn(5, 3, 16, 16)
    with torch.inference_mode():
        out = den(noisy, 0.25)
    assert out.shape == noisy.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    with torch.inference_mode():  # it is the same network: same output as the module we saved
        ref = DDPMDenoiser(tiny_unet, DDPMScheduler(prediction_type="v_prediction"))(noisy, 0.25)
    torch.testing.assert_close(out, ref)


def test_multi_step_resize_dtype_and_round_trip(tmp_path, tiny_unet):
    den = DDPMDenoiser(tiny_unet, DDPMScheduler(num_train_timesteps=1000), num_steps=4, eta=0.0, resize="bilinear")
    assert den.chain_timesteps(den.timestep(0.5)) == [259, 194, 130, 65]
    noisy = torch.rand(3, 3, 20, 24) + 0.5 * torch.randn(3, 3, 20, 24)  # not the UNet's 16x16: an explicit rule
    with torch.inference_mode():
        out = den(noisy, 0.5)
    assert out.shape == noisy.shape and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="resolution the denoiser works at"):
        DDPMDenoiser(tiny_unet, DDPMScheduler())(noisy, 0.5)
    with pytest.raises(ValueError, match="channels"):
        den(torch.rand(1, 1, 16, 16), 0.5)
    # multi-step stochastic chain runs as well; and bf16 for the UNet with fp32 in and out
    den.save_pretrained(tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    stochastic = create_denoiser(f"ddpm:{tmp_path}", num_steps=3, eta=1.0)
    low = create_denoiser(f"ddpm:{tmp_path}", dtype="bf16", resize="bilinear")
    with torch.inference_mode():
        z = torch.randn(3, stochastic.chain_noise_numbers(0.5, (3, 16, 16)))  # its runs' noise is passed in
        assert stochastic(noisy[:, :, :16, :16], 0.5, z).shape == (3, 3, 16, 16)
        assert low(noisy, 0.5).dtype == torch.float32
    with pytest.raises(ValueError, match="needs a folder"):
        create_denoiser("ddpm")
    with pytest.raises(ValueError, match="num_steps"):
        DDPMDenoiser(tiny_unet, DDPMScheduler(), num_steps=0)


def test_torn_diffusers_unet_is_one_line(tmp_path):
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8),
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                       layers_per_block=1, norm_num_groups=4)
    unet.save_pretrained(tmp_path / "u")
    weights = tmp_path / "u" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot be loaded"):
        create_denoiser(f"ddpm:{tmp_path / 'u'}")



# --- the shipped MNIST DDPM ----------------------------------------------------------------------------
def test_shipped_mnist_ddpm_is_registered_and_denoises_real_digits():
    from certify.data import create_dataset

    assert "ddpm.mnist5k" in list_denoisers("ddpm*")
    den = create_denoiser("ddpm.mnist5k")
    data = create_dataset("mnist5k:test")
    x = torch.stack([data[i][0] for i in range(32)])
    g = torch.Generator().manual_seed(0)
    for sigma, min_gain_db in ((0.25, 6.0), (0.5, 6.0)):
        noisy = x + sigma * torch.randn(x.shape, generator=g)
        with torch.inference_mode():
            out = den(noisy, sigma)
        psnr_noisy = -10 * math.log10(((noisy.clamp(0, 1) - x) ** 2).mean().item())
        psnr_out = -10 * math.log10(((out - x) ** 2).mean().item())
        assert psnr_out > psnr_noisy + min_gain_db, (sigma, psnr_noisy, psnr_out)


def test_certification_with_the_shipped_mnist_ddpm_runs_end_to_end():
    from certify import Smoothed
    from certify.data import create_dataset
    from classifiers import create_classifier

    classifier = create_classifier("small-cnn.mnist5k" if CLASSIFIER.is_dir() else "small-cnn").eval()
    smoothed = Smoothed(classifier, create_denoiser("ddpm.mnist5k"), sigma=0.25, num_classes=10)
    data = create_dataset("mnist5k:test")
    results = []
    for i in range(4):
        x, y = data[i]
        results.append((y, *smoothed.certify(x, n0=16, n=128, alpha=0.001, batch_size=64, seed=0, index=i)))
    for y, prediction, radius in results:
        assert prediction == -1 or 0 <= prediction < 10
        assert radius >= 0 and (prediction != -1 or radius == 0)
    if CLASSIFIER.is_dir():  # a trained classifier behind a trained denoiser certifies most easy digits
        assert sum(p == y and r > 0 for y, p, r in results) >= 3, results


# --- the exact rule: a fractional timestep at exactly sigma_VE -------------------------------------------
def _level_at(abar: np.ndarray, t: float) -> float:
    """The schedule's noise level at fractional t, written out: log sigma linear between floor(t) and floor(t) + 1."""
    i, f = int(math.floor(t)), t - math.floor(t)
    ratio = np.sqrt((1 - abar) / abar)
    return math.exp((1 - f) * math.log(ratio[i]) + f * math.log(ratio[min(i + 1, len(abar) - 1)]))


@pytest.mark.parametrize("kind", ["linear", "squaredcos_cap_v2"])
def test_exact_rule_calls_the_model_where_the_schedules_level_is_two_sigma(kind):
    den = _denoiser_for(DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind), timestep_rule="exact")
    abar = den.alphas_cumprod.double().numpy()  # diffusers' fp32 schedule (within 1e-4 of _abar_numpy's)
    for sigma in (0.05, 0.12, 0.25, 0.37, 0.5, 0.75, 1.0, 2.0):
        t = den.timestep(sigma)
        first = _brute_force(abar, sigma, "first")
        assert isinstance(t, float) and first - 1 < t <= first, (kind, sigma, t)
        assert _level_at(abar, t) == pytest.approx(2 * sigma, rel=1e-6), (kind, sigma)
        call = den.plan(sigma).calls[0]  # the scales the model input gets: sqrt(1 - abar) / sqrt(abar) is the level
        assert call.t == t and call.b / call.a == pytest.approx(2 * sigma, rel=1e-6), (kind, sigma)
        assert den.implied_sigma(sigma) == pytest.approx(sigma, rel=1e-9)


class NoiseOracle(nn.Module):
    """Predicts the engine's noise exactly (eps = d / sigma) and records the timesteps it is called at."""

    def __init__(self, d, sigma, channels):
        super().__init__()
        self.eps, self.config, self.calls = d / sigma, {"in_channels": channels, "out_channels": channels}, []
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        self.calls.append(t.clone())
        return SimpleNamespace(sample=self.eps)


def test_exact_rule_returns_the_clean_image_at_any_sigma_where_first_does_not():
    """x0 = (x_t - b eps) / a = x + (2 sigma - b / a) eps: clean only if the model is told exactly 2 sigma."""
    g = torch.Generator().manual_seed(3)
    clean = torch.rand(2, 1, 8, 8, generator=g)
    sigma = 0.3  # between two timesteps of the linear schedule
    d = sigma * torch.randn(clean.shape, generator=g)
    errors = {}
    for rule in ("first", "exact"):
        model = NoiseOracle(d, sigma, channels=1)
        den = DDPMDenoiser(model, DDPMScheduler(num_train_timesteps=1000), timestep_rule=rule)
        with torch.inference_mode():
            errors[rule] = float((den(clean + d, sigma) - clean).abs().max())
        assert model.calls[0].dtype == (torch.float32 if rule == "exact" else torch.long)
        assert float(model.calls[0][0]) == pytest.approx(den.timestep(sigma), abs=1e-4)
    assert errors["exact"] < 2e-5 < 1e-3 < errors["first"], errors


def test_fractional_timesteps_reach_the_unets_time_embedding(tiny_unet):
    """diffusers' positional embedding takes float timesteps: t = 144.5 is neither 144 nor 145."""
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        at = {t: tiny_unet(x, torch.full((2,), t)).sample for t in (144, 144.5, 145)}
    assert not torch.allclose(at[144.5], at[144]) and not torch.allclose(at[144.5], at[145])
    with pytest.raises(ValueError, match="learned table of integer timesteps"):
        DDPMDenoiser(UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8),
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                 layers_per_block=1, norm_num_groups=4, time_embedding_type="learned",
                                 num_train_timesteps=1000), DDPMScheduler(), timestep_rule="exact")
    with pytest.raises(ValueError, match="below the schedule's first noise level"):
        timestep_for_sigma(_abar_numpy("linear"), 0.001, rule="exact")


# --- today's certificates, to the bit ------------------------------------------------------------------
#: Recorded with the starting commit 5657d31 (before the rule was expressed on sigma_VE): sample_counts with
#: 64 samples per digit of mnist5k:test, seed 0, stream "estimation", small-cnn.mnist5k behind ddpm.mnist5k.
RECORDED_COUNTS = {
    (1.0, 1): {0: [62, 0, 0, 0, 1, 0, 0, 0, 1, 0], 66: [61, 0, 1, 1, 0, 1, 0, 0, 0, 0],
               132: [0, 57, 0, 2, 0, 0, 0, 0, 3, 2], 231: [0, 0, 62, 0, 0, 1, 0, 0, 1, 0]},
    (0.5, 3): {132: [0, 63, 0, 0, 0, 0, 0, 1, 0, 0]},
}


def test_first_rule_gives_the_recorded_certificates_and_the_papers_x0_to_the_bit():
    from certify import Smoothed
    from certify.data import create_dataset
    from classifiers import create_classifier

    data = create_dataset("mnist5k:test")
    classifier = create_classifier("small-cnn.mnist5k").eval()
    for (sigma, steps), rows in RECORDED_COUNTS.items():
        g = Smoothed(classifier, create_denoiser("ddpm.mnist5k", num_steps=steps), sigma=sigma)
        for i, counts in rows.items():
            assert g.sample_counts(data[i][0], 64, 64, g.generator(0, i, "estimation")).tolist() == counts, (sigma, i)
    cert = Smoothed(classifier, create_denoiser("ddpm.mnist5k"), sigma=0.25).certify_full(data[0][0], 16, 64, 0.001, 64)
    assert (cert.prediction, cert.nA, round(cert.radius, 6)) == (0, 64, 0.317121)
    # the one-shot estimate is Carlini et al.'s formula, computed here in the same fp32 operations
    den = create_denoiser("ddpm.mnist5k")
    noisy = torch.stack([data[i][0] for i in range(4)]) + 0.5 * torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    abar = den.alphas_cumprod[259]
    with torch.inference_mode():
        x_t = abar.sqrt() * (2.0 * noisy - 1.0)
        eps = den.unet(x_t, torch.full((4,), 259)).sample
        x0 = ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1.0, 1.0)
        assert torch.equal(den(noisy, 0.5), ((x0 + 1.0) / 2.0).clamp(0.0, 1.0))
