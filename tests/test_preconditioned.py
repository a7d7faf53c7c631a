"""The sigma-native families ``cm`` and ``edm``: x0 equal to diffusers' own pipeline / scheduler step at the
same noise level, loading from a folder (the hub-id code path is the same call), class labels, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    CMStochasticIterativeScheduler, ConsistencyModelPipeline, DDPMScheduler, EDMEulerScheduler)

from denoisers import create_denoiser  # noqa: E402
from denoisers.cm import CMDenoiser  # noqa: E402
from denoisers.edm import EDMDenoiser  # noqa: E402
from fixtures import tiny_unet  # noqa: E402

SIGMAS = (0.12, 0.25, 0.5, 1.0)  # pixel units: sigma_VE = 0.24 .. 2.0


def _noisy(sigma: float, seed: int = 1, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(batch, 3, 16, 16, generator=g)
    return clean + sigma * torch.randn(clean.shape, generator=g), clean


def _in_range(x0: torch.Tensor) -> float:
    return float(((x0 > -1) & (x0 < 1)).float().mean())


@pytest.mark.parametrize("sigma", SIGMAS)
def test_cm_equals_diffusers_consistency_pipeline_at_the_same_sigma(sigma):
    unet = tiny_unet(classes=10)
    den = CMDenoiser(unet, CMStochasticIterativeScheduler(), class_label=7)
    noisy, _ = _noisy(sigma)
    s = 2 * sigma
    # diffusers' own one-step sampling started at sigma_max = s from our noisy image: latents * s = 2 noisy - 1
    pipe = ConsistencyModelPipeline(unet=unet, scheduler=CMStochasticIterativeScheduler(sigma_max=s))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=3, class_labels=torch.full((3,), 7), num_inference_steps=None, timesteps=[0],
               latents=(2 * noisy - 1) / s, output_type="pt").images
    with torch.inference_mode():
        ours = den(noisy, sigma)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert 0.05 < float(((ref > 0) & (ref < 1)).float().mean())  # not a comparison of clipped constants


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_edm_equals_diffusers_edm_scheduler_step_at_the_same_sigma(prediction_type):
    unet = tiny_unet()
    den = EDMDenoiser(unet, EDMEulerScheduler(sigma_data=0.5, prediction_type=prediction_type))
    for sigma in SIGMAS:
        s = 2 * sigma
        noisy, _ = _noisy(sigma, seed=int(100 * sigma))
        x_ve = 2 * noisy - 1
        scheduler = EDMEulerScheduler(sigma_min=s, sigma_max=s, sigma_data=0.5, prediction_type=prediction_type)
        scheduler.set_timesteps(1)  # one step at exactly s
        t = scheduler.timesteps[0]
        with torch.no_grad():
            out = unet(scheduler.scale_model_input(x_ve, t), t).sample
            ref = scheduler.step(out, t, x_ve).pred_original_sample
            ours = den.denoise(x_ve, den.plan(sigma))
        assert _in_range(ref) > 0.5, (prediction_type, sigma)
        torch.testing.assert_close(ours, ref.clamp(-1, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["cm", "edm"])
def test_a_saved_folder_loads_by_spec_and_equals_the_module_saved(tmp_path, family):
    scheduler, cls = ((CMStochasticIterativeScheduler(), CMDenoiser) if family == "cm"
                      else (EDMEulerScheduler(), EDMDenoiser))
    unet = tiny_unet(classes=10)
    unet.save_pretrained(tmp_path / "unet")
    scheduler.save_pretrained(tmp_path / "scheduler")
    den = create_denoiser(f"{family}:{tmp_path}", class_label=3)
    assert isinstance(den, cls) and den.sample_size == (16, 16)
    noisy, _ = _noisy(0.25)
    with torch.inference_mode():
        torch.testing.assert_close(den(noisy, 0.25), cls(unet, scheduler, class_label=3)(noisy, 0.25))
    # a bare UNet folder gets the family's default scheduler
    unet.save_pretrained(tmp_path / "bare")
    assert type(create_denoiser(f"{family}:{tmp_path / 'bare'}", class_label=3).scheduler) is type(scheduler)


class Oracle(nn.Module):
    """A classifier whose prediction is a known function of its input: class = brightest of 10 bands."""

    num_classes = 10

    def forward(self, x):
        return torch.stack([x[:, :, i::10].mean(dim=(1, 2, 3)) for i in range(10)], dim=1)


def test_labels_come_from_the_noisy_input_alone():
    unet = tiny_unet(classes=10)
    seen = []
    unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["class_labels"].clone()),
                                   with_kwargs=True)
    den = CMDenoiser(unet, CMStochasticIterativeScheduler(), label_classifier=Oracle())
    noisy, clean = _noisy(0.25, batch=4)
    with torch.inference_mode():
        den(noisy, 0.25)
    expected = Oracle()(((2 * noisy - 1 + 1) / 2).clamp(0, 1)).argmax(1)
    assert torch.equal(seen[0], expected)
    fixed = CMDenoiser(unet, CMStochasticIterativeScheduler(), class_label=5)
    with torch.inference_mode():
        fixed(noisy, 0.25)
    assert seen[1].tolist() == [5] * 4


@pytest.mark.parametrize("kwargs, message", [
    ({}, "class-conditional .* class_label=K .* label_classifier=SPEC"),
    ({"class_label": 10}, r"class_label must be an int in \[0, 10\)"),
    ({"class_label": 1, "label_classifier": Oracle()}, "not both"),
    ({"label_classifier": "small-cnn"}, "label_classifier has 10 classes, the UNet 7"),
])
def test_class_label_choices_are_checked(kwargs, message):
    classes = 7 if kwargs.get("label_classifier") == "small-cnn" else 10
    with pytest.raises(ValueError, match=message):
        CMDenoiser(tiny_unet(classes=classes), CMStochasticIterativeScheduler(), **kwargs)


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="unconditional"):
        CMDenoiser(tiny_unet(), CMStochasticIterativeScheduler(), class_label=1)
    with pytest.raises(ValueError, match="needs a CMStochasticIterativeScheduler, got a DDPMScheduler"):
        CMDenoiser(tiny_unet(), DDPMScheduler())
    with pytest.raises(ValueError, match=r"pixel sigma in \(0.001, 40\]; got pixel sigma 50"):
        CMDenoiser(tiny_unet(), CMStochasticIterativeScheduler()).prepare(50.0)
    with pytest.raises(ValueError, match="prediction_type must be epsilon or v_prediction"):
        EDMDenoiser(tiny_unet(), EDMEulerScheduler(prediction_type="sample"))
    with pytest.raises(ValueError, match="needs a folder or hub id"):
        create_denoiser("cm")


def test_the_imagenet64_consistency_config_denoises_at_64_px_with_a_label_from_the_noisy_image():
    from pathlib import Path

    from certify.compare import compare_runs, load_compare_config

    config = load_compare_config(Path(__file__).parents[1] / "recipes" / "configs" / "paper_imagenet64_consistency.yaml")
    runs = [s for _, s, _ in compare_runs(config)]
    for s in runs:
        assert s.options.dataset_kwargs["size"] == 64 and (s.n0, s.n, s.alpha) == (100, 10_000, 0.001)
        assert s.denoiser == "cm:openai/diffusers-cd_imagenet64_lpips"
        assert s.options.denoiser_kwargs == {"label_classifier": s.classifier}  # the classifier's own vote on x + d
    assert {s.sigma for s in runs} == {0.25, 0.5, 1.0}
