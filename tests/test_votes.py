"""Issue 28, items 3 and 5: DensePure's vote (the base classifier is f's majority over K reverse-diffusion runs per
noisy sample), each run's randomness from the image's own stream; the DensePure ImageNet config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from certify import smoothing
from certify.cli import main
from certify.runs import run_certification
from certify.sequential import certify_at_stream
from certify.settings import RunSettings
from certify.smoothing import Smoothed, stream_seed
from certify.voting import cost_per_sample, majority
from denoisers.diffusion import VPDenoiser

ROOT = Path(__file__).resolve().parents[1]
ABAR = np.linspace(0.999, 0.01, 100)


class Shrink(nn.Module):
    """A stand-in for an eps-predicting network: the chain's moves, and so its noise, change what it returns."""

    def forward(self, x, t):
        return 0.3 * x


def linear(pixels: int, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, classes))


def chain(num_steps: int = 3, eta: float = 1.0) -> VPDenoiser:
    return VPDenoiser(Shrink(), ABAR, num_steps=num_steps, eta=eta)


def voting(votes: int = 3, **kw) -> Smoothed:
    return Smoothed(linear(16), chain(**kw), sigma=0.5, num_classes=3, votes=votes)


IMAGES = [torch.rand((1, 4, 4), generator=torch.Generator().manual_seed(i)) for i in range(3)]  # C*H*W = 16


# -- the majority and its tie rule, on runs whose answers are scripted ----------------------------------------------
SCRIPT = [[2, 1, 2, 1],   # a tie between 1 and 2: the smallest id, 1 (DensePure's code would take run 0's, 2)
          [3, 3, 0, 1],   # 3
          [0, 4, 4, 0],   # a tie between 0 and 4: 0
          [4, 4, 4, 2],   # 4
          [1, 2, 3, 4]]   # all tied: 1
VOTED = [1, 3, 0, 4, 1]


class Scripted(nn.Module):
    """A stochastic denoiser whose run k of noisy sample j returns an image of value SCRIPT[j][k] / 10."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def chain_noise_numbers(self, sigma, shape):
        return 16

    def forward(self, noisy, sigma, chain_noise):
        self.seen.append(chain_noise.clone())
        runs = torch.tensor(SCRIPT, dtype=torch.float32).view(-1)[:len(noisy)]  # rows: sample-major, j * K + k
        return runs.view(-1, 1, 1, 1).expand_as(noisy) / 10


class ByValue(nn.Module):
    """The class an image's value names (value * 10), as logits."""

    def forward(self, images):
        return nn.functional.one_hot((images.mean(dim=(1, 2, 3)) * 10).round().long().clamp(0, 4), 5).float()


def test_the_vote_is_the_majority_of_the_runs_and_a_tie_goes_to_the_smallest_class():
    den = Scripted()
    g = Smoothed(ByValue(), den, sigma=0.25, num_classes=5, votes=4)
    noisy = torch.rand(5, 1, 4, 4)
    assert g.base_predict(noisy, generator=torch.Generator().manual_seed(7)).tolist() == VOTED
    # each noisy sample's 4 runs took its own 4 x 16 numbers of the stream, sample-major
    expected = torch.randn((5, 4, 16), generator=torch.Generator().manual_seed(7)).view(20, 16)
    assert torch.equal(den.seen[-1], expected)
    # through the sampling step and its counting: one vote per noisy sample
    counts, bad = g.sample_batch([(noisy[0], 5, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))])
    assert counts[0].tolist() == np.bincount(VOTED, minlength=5).tolist() and not bool(bad)
    assert majority(torch.tensor(SCRIPT).view(-1), 4, 5).tolist() == VOTED


def test_every_run_is_checked_before_the_vote():
    class OneBadRun(Scripted):
        def forward(self, noisy, sigma, chain_noise):
            out = torch.full_like(noisy, 0.1)
            out[1] = 1.5  # run 1 of sample 0 leaves [0, 1]: the majority (class 1) would hide it
            return out

    g = Smoothed(ByValue(), OneBadRun(), sigma=0.25, num_classes=5, votes=3)
    with pytest.raises(smoothing.NonFiniteOutput):
        g.base_predict(torch.rand(2, 1, 4, 4), generator=torch.Generator())


# -- the randomness: the image's own "vote" stream --------------------------------------------------------------------
def test_each_runs_noise_comes_from_the_images_vote_stream():
    g = voting(votes=3)
    x, n, seed, index = IMAGES[0], 40, 5, 9
    counts = g.sample_counts(x, n, 16, g.generator(seed, index, "prediction"), g.vote_generator(seed, index, x.shape))
    # by hand: the smoothing noise of the prediction stream, then 3 runs per sample from the vote stream
    noise = torch.randn((n, 1, 4, 4), generator=torch.Generator().manual_seed(stream_seed(seed, index, "prediction")))
    z = torch.randn((n, 3, 32), generator=torch.Generator().manual_seed(stream_seed(seed, index, "vote")))
    assert g.denoiser.chain_noise_numbers(0.5, (1, 4, 4)) == 32  # 2 moves of a 3-call chain, 16 pixels each
    expected = np.zeros(3, dtype=np.int64)
    with torch.no_grad():
        for j in range(n):
            noisy = (x + 0.5 * noise[j]).unsqueeze(0)
            runs = [int(g.classifier(g.denoiser(noisy, 0.5, z[j, k:k + 1])).argmax()) for k in range(3)]
            expected[np.bincount(runs, minlength=3).argmax()] += 1
    assert counts.tolist() == expected.tolist()
    one_run = g.sample_counts(x, n, 16, g.generator(seed, index, "prediction"), g.vote_generator(seed, index, x.shape))
    assert torch.equal(one_run, counts)  # reproducible: nothing from torch's global generator


def test_identical_results_at_two_batch_sizes_packed_or_alone():
    g = voting(votes=3)
    runs = {batch: [c for _, c, _ in sorted(g.certify_stream(IMAGES, n0=20, n=100, alpha=0.01, batch_size=batch,
                                                               seed=2), key=lambda r: r[0])]
            for batch in (7, 64)}  # 64: several images' chunks in one pass
    alone = [g.certify_full(x, 20, 100, 0.01, 13, seed=2, index=i) for i, x in enumerate(IMAGES)]
    assert runs[7] == runs[64] == alone
    assert len({c.nA for c in alone}) > 1 or any(c.nA < c.n for c in alone), "the vote should not be constant"
    seq = {batch: [c for _, c in sorted((k, c) for k, c, _ in certify_at_stream(
        g, IMAGES, [0.1, 0.3], alpha=0.01, max_n=120, batch_size=batch, n0=20, step=10, max_step=10, seed=2))]
        for batch in (20, 64)}  # the sequential jobs draw from the vote stream too, look-ahead or not
    assert seq[20] == seq[64]


# -- what a vote refuses, and what no vote leaves unchanged -----------------------------------------------------------
def test_a_deterministic_denoiser_with_votes_is_refused_in_one_line(tmp_path, capsys):
    says = "votes=3 needs a stochastic denoiser whose runs differ"
    with pytest.raises(ValueError, match=says) as refused:
        Smoothed(linear(16), None, sigma=0.5, num_classes=3, votes=3)  # no denoiser: refused at assembly
    assert "\n" not in str(refused.value) and "num_steps=2 --denoiser-arg eta=1" in str(refused.value)
    with pytest.raises(ValueError, match=says):  # a chain without noise (eta = 0): at its first image
        voting(votes=3, eta=0.0).certify(IMAGES[0], 10, 20, 0.01, 10)
    with pytest.raises(ValueError, match="votes must be an int >= 1"):
        RunSettings(classifier="small-cnn", dataset="digits", sigma=0.5, options={"votes": 0}).validate()
    out = tmp_path / "r.tsv"
    code = main(["certify", "--classifier", "small-cnn", "--dataset", "digits", "--sigma", "0.5", "--n0", "10",
                 "--n", "20", "--max", "2", "--device", "cpu", "--votes", "3", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"dsmooth certify: error: {says}"), err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_votes_one_is_todays_pipeline_bit_for_bit(monkeypatch):
    asked = []
    real = smoothing.stream_seed
    monkeypatch.setattr(smoothing, "stream_seed", lambda seed, index, stream: asked.append(stream) or real(seed, index, stream))
    deterministic = chain(num_steps=2, eta=0.0)
    g = Smoothed(linear(16), deterministic, sigma=0.5, num_classes=3, votes=1)
    x, n0, n, batch = IMAGES[1], 20, 60, 16
    got = g.certify_full(x, n0, n, 0.01, batch, seed=4, index=3)
    assert "vote" not in asked  # no vote stream drawn
    # today's CERTIFY by hand: f(D(x + d)) counted on the selection and estimation streams, batch by batch
    counts = {}
    for stream, total in (("selection", n0), ("estimation", n)):
        gen = torch.Generator().manual_seed(real(4, 3, stream))
        c = np.zeros(3, dtype=np.int64)
        for at in range(0, total, batch):
            size = min(batch, total - at)
            noisy = torch.randn((size, 1, 4, 4), generator=gen).mul_(0.5).add_(x)
            with torch.no_grad():
                c += np.bincount(g.classifier(deterministic(noisy, 0.5)).argmax(1).numpy(), minlength=3)
        counts[stream] = c
    cA = int(counts["selection"].argmax())
    assert (got.prediction in (cA, -1)) and got.nA == counts["estimation"][cA] and got.n0 == n0
    assert RunSettings(classifier="c", dataset="d", sigma=0.5, options={"votes": 1}).validate().record()["options"] == {}
    assert RunSettings(classifier="c", dataset="d", sigma=0.5, options={"votes": 3}).validate().record()["options"] == {
        "votes": 3}


def test_a_stochastic_chain_without_a_vote_draws_its_noise_from_the_vote_stream():
    g = voting(votes=1)
    a = g.certify_full(IMAGES[2], 10, 50, 0.01, 7, seed=1, index=2)
    torch.manual_seed(123)  # torch's global generator plays no part
    assert g.certify_full(IMAGES[2], 10, 50, 0.01, 25, seed=1, index=2) == a
    with pytest.raises(ValueError, match="chain_noise of shape"):
        g.denoiser(torch.rand(2, 1, 4, 4), 0.5)  # called outside the engine, a stochastic chain asks for its noise


def test_compiled_and_attacked_with_votes():
    from certify.attack import attack_full

    eager = voting(votes=3).certify_full(IMAGES[0], 10, 40, 0.01, 10, seed=3)
    compiled = Smoothed(linear(16), chain(), sigma=0.5, num_classes=3, votes=3, compile="aot_eager")
    assert compiled.certify_full(IMAGES[0], 10, 40, 0.01, 10, seed=3) == eager
    g = voting(votes=3)  # SmoothAdv's gradient through one run (its noise from the attack stream), PREDICT by vote
    first = attack_full(g, IMAGES[0], 0, [0.2], n=30, alpha=0.01, batch_size=15, steps=2, m=4)
    assert attack_full(g, IMAGES[0], 0, [0.2], n=30, alpha=0.01, batch_size=15, steps=2, m=4) == first


def test_the_cost_per_sample_is_in_the_manifest(tmp_path):
    assert voting(votes=3).vote.cost() == {"votes": 3, "denoiser_calls": 9, "classifier_calls": 3,
                                           "forward_passes": 12}  # 3 runs x (3 chain calls + 1 classifier call)
    s = RunSettings(classifier="toy", dataset="toy", sigma=0.5, n0=10, n=20, batch=10, options={"votes": 3})
    out = run_certification(voting(votes=3), [(x, 0) for x in IMAGES[:2]], s, tmp_path / "r.tsv", quiet=True)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["cost_per_sample"]["forward_passes"] == 12 and manifest["settings"]["options"] == {"votes": 3}
    plain = run_certification(Smoothed(linear(16), None, sigma=0.5, num_classes=3), [(IMAGES[0], 0)],
                              RunSettings(classifier="toy", dataset="toy", sigma=0.5, n0=10, n=20, batch=10),
                              tmp_path / "plain.tsv", quiet=True)
    assert json.loads(plain.with_suffix(".json").read_text())["cost_per_sample"] == {
        "votes": 1, "denoiser_calls": 0, "classifier_calls": 1, "forward_passes": 1}


# -- two process counts: one `accelerate launch` ----------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_give_the_votes_of_one(tmp_path):
    from fixtures import ACCELERATE, launch_env

    args = ["certify", "--classifier", "small-cnn.mnist5k", "--dataset", "mnist5k:test", "--denoiser", "ddpm.mnist5k",
            "--denoiser-arg", "num_steps=2", "--denoiser-arg", "eta=1", "--votes", "3", "--sigma", "0.5",
            "--n0", "10", "--n", "30", "--batch", "16", "--skip", "250", "--max", "1000", "--seed", "3",
            "--device", "cpu", "--quiet"]
    one, two = tmp_path / "one.tsv", tmp_path / "two.tsv"
    assert main([*args, "--out", str(one)]) == 0
    subprocess.run([*ACCELERATE, "-m", "certify.cli", *args, "--out", str(two)], check=True, capture_output=True,
                   env=launch_env(ACCELERATE_USE_CPU="1"))

    lines = one.read_text().splitlines()
    time = lines[0].split("\t").index("time")
    strip = lambda p: [[c for k, c in enumerate(line.split("\t")) if k != time] for line in p.read_text().splitlines()]  # noqa: E731
    assert len(lines) == 5 and strip(one) == strip(two)
    manifest = json.loads(two.with_suffix(".json").read_text())
    assert manifest["world_size"] == 2 and manifest["cost_per_sample"]["forward_passes"] == 9  # 3 x (2 + 1)


# -- the DensePure ImageNet config --------------------------------------------------------------------------------------
def test_the_densepure_imagenet_config_parses_names_registered_plugins_and_states_its_cost():
    from certify.compare import compare_runs, load_compare_config
    from classifiers import list_classifiers
    from denoisers import list_denoisers

    path = ROOT / "recipes" / "configs" / "paper_imagenet_densepure.yaml"
    runs = [s for _, s, _ in compare_runs(load_compare_config(path))]
    assert {s.sigma for s in runs} == {0.25, 0.5, 1.0}
    for s in runs:
        assert s.denoiser.split(":")[0] in list_denoisers() and s.classifier.split(":")[0] in list_classifiers()
        assert (s.denoiser, s.classifier) == ("adm:imagenet256-uncond", "timm:beit_large_patch16_512.in22k_ft_in22k_in1k")
        assert (s.n0, s.n, s.alpha, s.skip, s.options.votes) == (100, 10_000, 0.001, 500, 10)
        assert s.options.denoiser_kwargs == {"num_steps": 2, "eta": 1.0, "timestep_rule": "nearest"}
        assert s.options.dataset_kwargs == {"size": 256}
        # the cost its comments state, by our cost model on ADM's linear 1000-step schedule
        den = VPDenoiser(Shrink(), np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), **s.options.denoiser_kwargs)
        den.prepare(s.sigma)
        per_sample = cost_per_sample(den, s.sigma, s.options.votes)["forward_passes"]
        assert per_sample == 30 and f"{(s.n0 + s.n) * per_sample:,}" in path.read_text()
    assert "67.0 %" in path.read_text() and "54.3 %" in path.read_text()
