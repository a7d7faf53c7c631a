"""The ``adm`` family: OpenAI's guided-/improved-diffusion checkpoints under the one diffusion rule.

The references are the published code itself (``guided_diffusion``, PyPI guided-diffusion-sdk): its
``GaussianDiffusion.p_mean_variance`` gives the x0 estimate our denoiser must reproduce, and the
improved-diffusion layout in tests/data was written by improved-diffusion's own model code.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("guided_diffusion", reason="the adm extra (guided-diffusion-sdk) is installed by make test")

from certify.settings import RunSettings  # noqa: E402
from certify.pipeline import certify_dataset  # noqa: E402
from denoisers import create_denoiser, list_denoisers  # noqa: E402
from denoisers.adm import ADMDenoiser, adm_flags, build_adm  # noqa: E402
from denoisers.diffusion import resize, resize_noise_gain  # noqa: E402
from fixtures import random_adm  # noqa: E402

DATA = Path(__file__).parent / "data"
TINY64 = dict(image_size=64, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="32",
              num_head_channels=16, learn_sigma=True)
TINY_COSINE = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
                   num_heads=2, learn_sigma=True, noise_schedule="cosine", diffusion_steps=4000,
                   rescale_timesteps=True)


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    path = tmp_path_factory.mktemp("adm") / "tiny64.pt"
    return (path, *random_adm(TINY64, path))


@pytest.mark.parametrize("flags", [TINY64, TINY_COSINE], ids=["64px-learned-sigma", "cosine-4000-rescaled"])
def test_x0_equals_guided_diffusions_pred_xstart(tmp_path, flags):
    model, diffusion = random_adm(flags, tmp_path / "m.pt")
    den = create_denoiser(f"adm:{tmp_path / 'm.pt'}", **flags)
    assert isinstance(den, ADMDenoiser) and den.learned_variance and den.prediction_type == "epsilon"
    assert den.timestep_scale == (0.25 if flags.get("rescale_timesteps") else 1.0)
    size = flags["image_size"]
    g = torch.Generator().manual_seed(1)
    for sigma in (0.25, 0.5):
        t = den.timestep(sigma)
        x_t = torch.randn(3, 3, size, size, generator=g)
        with torch.no_grad():
            ours = den.predict_x0_eps(x_t, t)[0]
            ref = diffusion.p_mean_variance(model, x_t, torch.full((3,), t), clip_denoised=True)["pred_xstart"]
        assert ref.abs().mean() > 0.1  # a real estimate, not the zero-initialised output
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        # the whole forward pass: x_t = sqrt(abar_t*) (2 noisy - 1), then the same estimate mapped to [0, 1]
        noisy = torch.rand(3, 3, size, size, generator=g) + sigma * torch.randn(3, 3, size, size, generator=g)
        abar = float(diffusion.alphas_cumprod[t])
        with torch.no_grad():
            out = den(noisy, sigma)
            ref = diffusion.p_mean_variance(model, math.sqrt(abar) * (2 * noisy - 1), torch.full((3,), t),
                                            clip_denoised=True)["pred_xstart"]
        torch.testing.assert_close(out, (ref + 1) / 2, atol=1e-5, rtol=0)


def test_rescaled_timesteps_reach_the_model():
    """improved-diffusion models see t * 1000 / T: the same weights told raw t give another estimate."""
    flags = adm_flags(**TINY_COSINE)
    model, diffusion = build_adm(flags)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    rescaled = ADMDenoiser(model.eval(), diffusion, flags)
    raw = ADMDenoiser(model, diffusion, {**flags, "rescale_timesteps": False})
    x_t = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(rescaled.predict_x0_eps(x_t, 1158)[0], raw.predict_x0_eps(x_t, 1158)[0])


def _cosine_abar(steps: int) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule in closed form: abar(i) = f((i + 1) / T) / f(0), where the
    0.999 cap on beta does not bind (it binds only in the last steps, far beyond any t* here)."""
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    return f((np.arange(steps) + 1) / steps) / f(0.0)


def test_timestep_for_the_4000_step_cosine_schedule_agrees_with_an_independent_computation(tmp_path):
    random_adm(TINY_COSINE, tmp_path / "m.pt")
    den = create_denoiser(f"adm:{tmp_path / 'm.pt'}", **TINY_COSINE)
    ratio = np.sqrt((1 - _cosine_abar(4000)) / _cosine_abar(4000))
    sigmas = (0.12, 0.25, 0.5, 1.0)
    independent = [int(np.argmax(ratio >= 2 * s)) for s in sigmas]
    assert [den.timestep(s) for s in sigmas] == independent == [573, 1158, 1984, 2809]  # = Carlini et al.'s code


def test_improved_diffusion_layout_loads_into_the_same_family(tmp_path):
    """improved-diffusion's CIFAR-10 keys (written by its own code) equal guided-diffusion's under the preset."""
    published = json.loads((DATA / "improved_diffusion_cifar10_keys.json").read_text())
    with torch.device("meta"):
        model, diffusion = build_adm(adm_flags("cifar10-uncond"))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == published["keys"] and published["rescale_timesteps"] is True
    # what makes them equal: resblock_updown=False (improved-diffusion resamples with separate blocks) ...
    with torch.device("meta"):
        other, _ = build_adm(adm_flags("cifar10-uncond", resblock_updown=True))
    assert set(other.state_dict()) != set(published["keys"])
    # ... and a checkpoint under its official file name loads with the preset inferred from that name
    state = {k: torch.randn(v) * 0.02 for k, v in published["keys"].items()}
    torch.save(state, tmp_path / "cifar10_uncond_50M_500K.pt")
    den = create_denoiser(f"adm:{tmp_path / 'cifar10_uncond_50M_500K.pt'}")
    assert den.name == "cifar10-uncond" and den.flags["diffusion_steps"] == 4000 and den.timestep_scale == 0.25
    assert [den.timestep(s) for s in (0.25, 0.5, 1.0)] == [1158, 1984, 2809]
    with torch.no_grad():
        out = den(torch.rand(2, 3, 32, 32) + 0.25 * torch.randn(2, 3, 32, 32), 0.25)
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1


def test_refusals_are_one_line(tmp_path, tiny64):
    path = tiny64[0]
    with pytest.raises(ValueError, match="do not match the ADM UNet of these flags.*preset="):
        create_denoiser(f"adm:{path}")  # guided-diffusion's default flags are another network
    with pytest.raises(ValueError, match="unknown option 'num_chanels'"):
        create_denoiser(f"adm:{path}", num_chanels=32)
    with pytest.raises(ValueError, match="unknown adm preset 'imagenet'"):
        create_denoiser(f"adm:{path}", preset="imagenet")
    with pytest.raises(ValueError, match="timestep_respacing"):
        create_denoiser(f"adm:{path}", timestep_respacing="ddim25", **TINY64)
    with pytest.raises(ValueError, match="class_cond"):
        create_denoiser(f"adm:{path}", class_cond=True, **TINY64)
    with pytest.raises(ValueError, match="cannot build a UNet"):
        create_denoiser(f"adm:{path}", **{**TINY64, "num_channels": 30})  # GroupNorm(32) needs a multiple of 32
    with pytest.raises(ValueError, match="is a folder"):
        create_denoiser(f"adm:{tmp_path}")
    with pytest.raises(ValueError, match="not a file"):
        create_denoiser("adm:no-such-model.pt")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        create_denoiser("adm")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a pickled module, not a state dict
    with pytest.raises(ValueError, match=r"is a pickle \(of torch.nn.modules.linear.Linear\)"):
        create_denoiser(f"adm:{pickled}", **TINY64)
    pickled.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ValueError, match="pickles are refused|state dict of tensors"):
        create_denoiser(f"adm:{pickled}", **TINY64)
    nested = tmp_path / "nested.pt"  # a state dict kept under "model" by a training script is fine
    torch.save({"model": torch.load(path, weights_only=True)}, nested)
    assert isinstance(create_denoiser(f"adm:{nested}", **TINY64), ADMDenoiser)
    assert "adm" in list_denoisers()


@pytest.fixture
def builds(monkeypatch):
    """Every call of guided-diffusion's builder, by the device it builds on; one for real is refused here
    (the code as it was would allocate the 20 GB these tests ask for)."""
    from guided_diffusion import script_util

    original, devices = script_util.create_model_and_diffusion, []

    def spy(**flags):
        devices.append(torch.empty(0).device.type)
        if devices[-1] != "meta" and flags["num_channels"] > 64:
            raise AssertionError("a UNet beyond the tiny ones of these tests was built for real")
        return original(**flags)

    monkeypatch.setattr(script_util, "create_model_and_diffusion", spy)
    return devices


def test_a_garbage_or_empty_file_is_refused_before_any_unet_is_built(tmp_path, builds):
    """Issue 25 item 8: 66 bytes under the official name cost the 552M-parameter UNet (3 GB, 31 s) before
    they were refused; an empty file with num_channels=768 passed the size check and began on 20 GB."""
    official = tmp_path / "256x256_diffusion_uncond.pt"
    official.write_bytes(b"not a checkpoint: 66 bytes of garbage under the official file name..")
    with pytest.raises(ValueError, match=r"256x256_diffusion_uncond.pt is not a weights file torch can read"):
        create_denoiser(f"adm:{official}")
    official.write_bytes(b"")
    with pytest.raises(ValueError, match=r"256x256_diffusion_uncond.pt is empty or cut short"):
        create_denoiser(f"adm:{official}", num_channels=768)
    assert builds == []  # the file was read first: no UNet built, not even on the meta device


def test_weights_that_do_not_fit_are_refused_on_the_meta_device(tmp_path, tiny64, builds):
    """A readable file of another network is compared on the meta device, never built for real."""
    official = tmp_path / "256x256_diffusion_uncond.pt"
    official.write_bytes(tiny64[0].read_bytes())
    for flags in ({}, {"num_channels": 768}):  # the preset (552M parameters), and 5.0G parameters (20 GB)
        with pytest.raises(ValueError, match="do not match the ADM UNet of preset imagenet256-uncond"):
            create_denoiser(f"adm:{official}", **flags)
    assert builds == ["meta", "meta"]


def test_the_loaded_unet_holds_the_files_tensors_once(tiny64, builds, monkeypatch):
    """Built with its parameters on meta and the file's tensors assigned: no random initialisation beside
    the weights (the old peak was two copies); the same estimate as the published code's (tests above)."""
    import denoisers.adm as adm

    read = []
    monkeypatch.setattr(adm, "read_weights", lambda path: read.append(torch.load(path, weights_only=True)) or read[-1])
    den = create_denoiser(f"adm:{tiny64[0]}", **TINY64)
    assert builds == ["meta", "cpu"]  # compared on meta, then built once
    state = dict(den.model.state_dict())
    assert state.keys() == read[0].keys()
    assert all(state[k].data_ptr() == read[0][k].data_ptr() for k in state)
    assert all(torch.equal(state[k], v) for k, v in tiny64[1].state_dict().items())


@pytest.mark.parametrize("steps", [10**9, 0, 1000.5, True])
def test_diffusion_steps_are_bounded_before_guided_diffusion_allocates_them(steps):
    """guided-diffusion builds its schedule (about 420 bytes per step) before any weight: 10**9 is 420 GB."""
    with pytest.raises(ValueError, match=r"diffusion_steps must be an integer from 1 to 100,000"):
        adm_flags(diffusion_steps=steps)


def test_size_mismatch_is_an_error_unless_an_explicit_rule_is_asked_for(tiny64):
    path, model, diffusion = tiny64
    den = create_denoiser(f"adm:{path}", **TINY64)
    noisy = torch.rand(2, 3, 128, 128) + 0.5 * torch.randn(2, 3, 128, 128)
    with pytest.raises(ValueError, match=r"works at 64x64 but the images are 128x128.*--dataset-arg size=64"):
        den(noisy, 0.5)
    ruled = create_denoiser(f"adm:{path}", resize="bilinear", **TINY64)
    assert resize_noise_gain((128, 128), (64, 64), "bilinear") == pytest.approx(0.5)
    with torch.no_grad():
        out = ruled(noisy, 0.5)
        # the rule: the noisy image at 64 px carries noise 0.25, so t* is the one for 0.25, not 0.5
        x_t = math.sqrt(float(diffusion.alphas_cumprod[den.timestep(0.25)])) * (2 * resize(noisy, (64, 64), "bilinear") - 1)
        ref = diffusion.p_mean_variance(model, x_t, torch.full((2,), den.timestep(0.25)), clip_denoised=True)["pred_xstart"]
    torch.testing.assert_close(out, resize((ref + 1) / 2, (128, 128), "bilinear").clamp(0, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "area", "nearest"])
@pytest.mark.parametrize("sizes", [((56, 56), (28, 28)), ((28, 28), (56, 56)), ((40, 30), (32, 32))])
def test_resize_noise_gain_is_the_measured_noise_std(mode, sizes):
    source, target = sizes
    noise = torch.randn(200, 1, *source, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    measured = resize(noise, target, mode).pow(2).mean().sqrt().item()
    assert resize_noise_gain(source, target, mode) == pytest.approx(measured, rel=0.02)


def test_the_effective_noise_level_denoises_better_than_the_nominal_one():
    """The issue's measurement: MNIST digits at 56 px, noise added there, resized to the DDPM's 28 px,
    where the noise std is half of sigma: told that level, the model denoises better than told sigma."""
    from certify.data import create_dataset

    data = create_dataset("mnist5k:test")
    big = resize(torch.stack([data[i][0] for i in range(0, 1000, 20)]), (56, 56), "bilinear")  # 50 digits
    target = resize(big, (28, 28), "bilinear")  # the clean signal the model sees
    den = create_denoiser("ddpm.mnist5k", resize="bilinear")
    psnr = lambda x: -10 * math.log10(((x - target) ** 2).mean().item())  # noqa: E731
    gain = resize_noise_gain((56, 56), (28, 28), "bilinear")
    assert gain == pytest.approx(0.5)
    for sigma in (0.25, 0.5):
        noisy = big + sigma * torch.randn(big.shape, generator=torch.Generator().manual_seed(0))
        small = resize(noisy, (28, 28), "bilinear")

        def told(level: float) -> torch.Tensor:
            t = den.timestep(level)
            return (den.predict_x0_eps(math.sqrt(float(den.alphas_cumprod[t])) * (2 * small - 1), t)[0] + 1) / 2

        with torch.no_grad():
            right, nominal, out = told(sigma * gain), told(sigma), den(noisy, sigma)
        torch.testing.assert_close(out, resize(right, (56, 56), "bilinear").clamp(0, 1))  # the rule picks gain * sigma
        assert psnr(right) > psnr(nominal) + 0.7, (sigma, psnr(right), psnr(nominal))  # measured: +1.1 dB at both


def test_certification_runs_end_to_end_with_a_tiny_adm(tmp_path):
    from PIL import Image

    random_adm(TINY_COSINE, tmp_path / "adm.pt")
    rng = np.random.default_rng(0)
    for label in (0, 1):
        (tmp_path / "images" / str(label)).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / str(label) / f"{i}.png")
    options = {"dataset_kwargs": {"size": 32}, "denoiser_kwargs": TINY_COSINE,
               "classifier_kwargs": {"in_channels": 3, "num_classes": 2, "image_size": 16}}
    settings = RunSettings(classifier="small-cnn", dataset=f"imagefolder:{tmp_path / 'images'}", sigma=0.25,
                           denoiser=f"adm:{tmp_path / 'adm.pt'}", n0=8, n=32, batch=16, options=options)
    out = certify_dataset(settings, tmp_path / "r.tsv", device="cpu", quiet=True)
    lines = out.read_text().splitlines()
    assert lines[0].split("\t")[:6] == ["idx", "label", "predict", "radius", "correct", "time"] and len(lines) == 5
    # the data at another size than the model's: refused before anything is written
    bad = RunSettings(**{**settings.__dict__, "options": {**options, "dataset_kwargs": {"size": 40}}})
    with pytest.raises(ValueError, match="works at 32x32 but the images are 40x40"):
        certify_dataset(bad, tmp_path / "bad.tsv", device="cpu", quiet=True)
    assert not (tmp_path / "bad.tsv").exists() and not (tmp_path / "bad.tsv.json").exists()


def test_imagenet_preset_is_the_published_552m_parameter_unet():
    with torch.device("meta"):
        model, diffusion = build_adm(adm_flags("imagenet256-uncond"))
    assert 552e6 < sum(p.numel() for p in model.parameters()) < 553e6
    den = ADMDenoiser(model, diffusion, adm_flags("imagenet256-uncond"))
    assert [den.timestep(s) for s in (0.12, 0.25, 0.5, 1.0)] == [70, 145, 259, 396]  # linear 1000 steps
    assert den.sample_size == (256, 256) and den.timestep_scale == 1.0 and den.learned_variance


def test_paper_diffusion_configs_run_as_published():
    from certify.compare import compare_runs, load_compare_config

    configs = Path(__file__).parents[1] / "recipes" / "configs"
    imagenet = [s for _, s, _ in compare_runs(load_compare_config(configs / "paper_imagenet_diffusion.yaml"))]
    assert {s.options.dataset_kwargs["size"] for s in imagenet} == {adm_flags("imagenet256-uncond")["image_size"]} == {256}
    assert {(s.n0, s.n, s.alpha, s.skip) for s in imagenet} == {(100, 10_000, 0.001, 50)}
    assert {s.sigma for s in imagenet} == {0.25, 0.5, 1.0}
    assert {(s.denoiser, s.classifier) for s in imagenet} == {
        ("adm:imagenet256-uncond", "timm:beit_large_patch16_512.in22k_ft_in22k_in1k")}
    cifar = [s for _, s, _ in compare_runs(load_compare_config(configs / "paper_cifar10_diffusion.yaml"))]
    assert {(s.n0, s.n, s.alpha, s.skip) for s in cifar} == {(100, 100_000, 0.001, 20)}
    by_denoiser = {d: {s.sigma for s in cifar if s.denoiser == d} for d in {s.denoiser for s in cifar}}
    assert by_denoiser == {"adm:cifar10-uncond": {0.25, 0.5, 1.0}, "ddpm:google/ddpm-cifar10-32": {0.25, 0.5, 1.0}}
    assert adm_flags("cifar10-uncond")["image_size"] == 32  # CIFAR-10's own size: no resize in front of it


def test_fp16_through_the_models_own_conversion_keeps_fp32_in_and_out(tiny64):
    path = tiny64[0]
    full, half = create_denoiser(f"adm:{path}", **TINY64), create_denoiser(f"adm:{path}", use_fp16=True, **TINY64)
    assert half.model.input_blocks[0][0].weight.dtype == torch.float16
    noisy = torch.rand(2, 3, 64, 64) + 0.25 * torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = full(noisy, 0.25), half(noisy, 0.25)
    assert b.dtype == torch.float32 and (a - b).abs().max() < 1e-2


def test_exact_rule_calls_guided_diffusions_unet_at_the_fractional_rescaled_timestep(tmp_path):
    """guided-diffusion's timestep embedding takes float t (rescaled to 0..1000 here): x0 is the eps formula at
    abar = 1 / (1 + (2 sigma)^2), the model called at t* * 1000 / T, and t* is neither of its neighbours."""
    model, diffusion = random_adm(TINY_COSINE, tmp_path / "m.pt")
    den = create_denoiser(f"adm:{tmp_path / 'm.pt'}", timestep_rule="exact", **TINY_COSINE)
    sigma = 0.3
    t = den.timestep(sigma)
    assert 0 < t - math.floor(t) < 1
    noisy = torch.rand(2, 3, 32, 32) + sigma * torch.randn(2, 3, 32, 32)
    abar = 1 / (1 + (2 * sigma) ** 2)
    x_t = math.sqrt(abar) * (2 * noisy - 1)
    with torch.no_grad():
        eps = {s: model(x_t, torch.full((2,), s * 0.25))[:, :3] for s in (t, math.floor(t), math.ceil(t))}
        ours = den(noisy, sigma)
    ref = ((x_t - math.sqrt(1 - abar) * eps[t]) / math.sqrt(abar)).clamp(-1, 1)
    torch.testing.assert_close(ours, (ref + 1) / 2, atol=1e-5, rtol=0)
    assert not torch.allclose(eps[t], eps[math.floor(t)]) and not torch.allclose(eps[t], eps[math.ceil(t)])


@pytest.mark.parametrize("new_order", [False, True], ids=["legacy-order", "new-order"])
def test_fused_attention_equals_guided_diffusions_einsum_attention(tmp_path, new_order):
    from guided_diffusion.unet import QKVAttention, QKVAttentionLegacy

    from denoisers.adm import FusedQKVAttention, use_fused_attention

    flags = dict(TINY64, num_head_channels=-1, num_heads=2, use_new_attention_order=new_order)
    model, _ = random_adm(flags, tmp_path / "m.pt")
    einsum_type = QKVAttention if new_order else QKVAttentionLegacy
    assert sum(type(m) is einsum_type for m in model.modules()) >= 2
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([10, 500])
    qkv = torch.randn(2, 3 * 2 * 16, 40)
    with torch.no_grad():
        reference, single = model(x, t), einsum_type(2)(qkv)
        torch.testing.assert_close(FusedQKVAttention(2, legacy=not new_order)(qkv), single, atol=1e-5, rtol=0)
        use_fused_attention(model)
        assert not any(type(m) is einsum_type for m in model.modules())
        torch.testing.assert_close(model(x, t), reference, atol=1e-5, rtol=0)
    assert reference.abs().mean() > 0.01  # a real output (the output conv is not the zero of a fresh model)
    den = create_denoiser(f"adm:{tmp_path / 'm.pt'}", **flags)  # create_adm swaps them too
    assert sum(isinstance(m, FusedQKVAttention) for m in den.modules()) >= 2
