"""denoisers/trained.py, dncnn.py, memnet.py, objectives.py: the architectures as the papers build them, checkpoints
that round-trip exactly, a denoiser used at another sigma than its own warned once, at assembly; each objective
lowers its loss, the classifier stays frozen, surrogates rotate per minibatch; the shipped MNIST DnCNNs denoise
and help the shipped classifier. (Bad checkpoint files: test_checkpoint.py.)"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from certify import Smoothed
from classifiers import create_classifier
from certify.training import freeze
from denoisers import create_denoiser, list_denoisers
from denoisers.dncnn import DnCNN
from denoisers.memnet import MemNet
from denoisers.objectives import OBJECTIVES, ClassifierRotation, denoiser_loss
from denoisers.trained import TrainedDenoiser
from denoisers.training import evaluate_denoiser
from fixtures import ROOT


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- architectures

def test_parameter_counts_for_three_channels():
    assert n_params(create_denoiser("dncnn")) == 558_400
    assert n_params(create_denoiser("dncnn-wide")) == 2_222_720


def test_dncnn_layers_follow_the_paper():
    net = DnCNN(in_channels=3)
    convs = [m for m in net.net if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.net if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 17 and len(bns) == 15
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    assert all(bn.eps == 1e-4 and bn.momentum == 0.95 for bn in bns)
    assert all(bool((bn.weight == 1).all() and (bn.bias == 0).all()) for bn in bns)
    w = convs[1].weight.flatten(1)  # orthogonal init: rows orthonormal (64 rows, 576 columns)
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-4)
    assert bool((convs[-1].weight == 0).all())


@pytest.mark.parametrize("channels", [1, 3])
def test_fresh_dncnn_is_the_identity(channels):
    x = torch.rand(2, channels, 12, 10)
    net = DnCNN(in_channels=channels, depth=6, features=8)
    assert torch.equal(net(x, 0.5), x)
    assert torch.equal(net.eval()(x, 0.5), x)


def test_output_is_clamped_to_the_unit_interval():
    net = DnCNN(in_channels=1, depth=3, features=4)
    noisy = torch.randn(2, 1, 8, 8) * 2
    out = net(noisy, 0.5)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, noisy.clamp(0, 1))


def test_memnet_structure_matches_reference():
    net = MemNet(in_channels=3)
    assert len(net.memory_blocks) == 3
    for m, block in enumerate(net.memory_blocks, start=1):
        assert len(block.resblocks) == 6
        assert block.gate.conv.in_channels == (6 + m) * 64
        assert block.gate.conv.out_channels == 64 and block.gate.conv.kernel_size == (1, 1)
    assert (net.feature_extractor.conv.in_channels, net.feature_extractor.conv.out_channels) == (3, 64)
    assert (net.reconstructor.conv.in_channels, net.reconstructor.conv.out_channels) == (64, 3)
    assert all(c.bias is None for c in net.modules() if isinstance(c, nn.Conv2d))
    # BN -> ReLU -> conv order in every unit
    assert [type(m).__name__ for m in net.feature_extractor.children()] == ["BatchNorm2d", "ReLU", "Conv2d"]


def test_memnet_global_residual():
    net = MemNet(in_channels=1, features=8, num_memblocks=2, num_resblocks=2).eval()
    nn.init.zeros_(net.reconstructor.conv.weight)
    x = torch.rand(2, 1, 10, 10)
    assert torch.equal(net(x, 0.25), x)


def test_families_are_registered():
    assert {"dncnn", "dncnn-wide", "memnet"} <= set(list_denoisers())


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="depth"):
        DnCNN(depth=1)
    with pytest.raises(ValueError, match="unknown dncnn option"):
        DnCNN(in_channels=1, width=3)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        DnCNN(in_channels=1, depth=3, features=4)(torch.rand(2, 3, 8, 8), 0.25)
    with pytest.raises(ValueError, match="sigma"):  # checked once, at assembly, not on every forward pass
        Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), DnCNN(in_channels=1, depth=3, features=4), sigma=0.0,
                 num_classes=2)
    with pytest.raises(ValueError, match="sigma must be a positive, finite number"):  # the one rule of sigma
        DnCNN(in_channels=1, depth=3, features=4, sigma=0.0)


# ---------------------------------------------------------------- checkpoints

def _trained_like(model: TrainedDenoiser) -> TrainedDenoiser:
    """Perturb weights and BN statistics so a round trip has something to get wrong."""
    torch.manual_seed(0)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.add_(0.05 * torch.randn_like(t)).abs_() if t.ndim == 1 else t.add_(0.05 * torch.randn_like(t))
    return model.eval()


@pytest.mark.parametrize("make", [lambda: DnCNN(1, depth=4, features=8, sigma=0.5, objective="mse"),
                                  lambda: MemNet(1, features=8, num_memblocks=2, num_resblocks=2, sigma=0.5)])
def test_save_load_round_trip_is_identical(tmp_path, make):
    model = _trained_like(make())
    model.save_pretrained(tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["architecture"] == model.architecture and config["sigma"] == 0.5
    family = model.architecture
    loaded = create_denoiser(f"{family}:{tmp_path / 'ck'}")
    assert type(loaded) is type(model) and not loaded.training
    x = torch.rand(3, 1, 9, 9)
    assert torch.equal(loaded(x, 0.5), model(x, 0.5))
    # fp16 on disk: same outputs up to half precision
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    half = TrainedDenoiser.from_pretrained(tmp_path / "half")
    assert torch.allclose(half(x, 0.5), model(x, 0.5), atol=2e-2)


def test_other_sigma_warns_once_and_trained_sigma_does_not(tmp_path, caplog):
    DnCNN(1, depth=3, features=4, sigma=0.25).save_pretrained(tmp_path)
    model = create_denoiser(f"dncnn:{tmp_path}")
    x = torch.full((1, 8, 8), 0.5)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        Smoothed(classifier, model, sigma=0.25, num_classes=2).certify(x, n0=5, n=20, alpha=0.01, batch_size=5)
        assert not caught and not caplog.records
        g = Smoothed(classifier, model, sigma=0.5, num_classes=2)  # compared once, here, at assembly
        g.certify(x, n0=5, n=20, alpha=0.01, batch_size=5)  # five batches
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    # one line in all: once per sigma per model, not once per batch, and not as a warning AND a log line
    assert len(said) == 1 and "trained for sigma=0.25 but is used at sigma=0.5" in said[0]


# ---------------------------------------------------------------- objectives on real digits

@pytest.fixture(scope="module")
def mnist_batch():
    from certify.data import create_dataset

    ds = create_dataset("mnist5k:train")
    xs, ys = zip(*(ds[i] for i in range(0, 4000, 50)))
    return torch.stack(xs), torch.tensor(ys)


@pytest.fixture(scope="module")
def mnist_classifier(mnist_batch):
    """A small-cnn fitted for a few steps on the batch (enough to be a meaningful guide)."""
    torch.manual_seed(0)
    clf = create_classifier("small-cnn", width=8)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    x, y = mnist_batch
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(clf(x), y).backward()
        opt.step()
    return freeze(clf)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_each_objective_lowers_its_loss(objective, mnist_batch, mnist_classifier):
    x, y = mnist_batch
    torch.manual_seed(1)
    den = DnCNN(1, depth=4, features=16)
    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    clf = mnist_classifier if OBJECTIVES[objective].needs_classifier else None

    def fixed_noise_loss() -> float:
        den.eval()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(123)
            value = float(denoiser_loss(objective, den, x, y, 0.5, clf))
        den.train()
        return value

    before = fixed_noise_loss()
    for _ in range(8):
        opt.zero_grad()
        denoiser_loss(objective, den, x, y, 0.5, clf).backward()
        opt.step()
    after = fixed_noise_loss()
    assert after < 0.9 * before, (objective, before, after)


def test_objective_needs_a_classifier():
    with pytest.raises(ValueError, match="needs a classifier"):
        denoiser_loss("stab", DnCNN(1, 3, 4), torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), 0.25)
    with pytest.raises(ValueError, match="objective must be one of"):
        denoiser_loss("l1", DnCNN(1, 3, 4), torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), 0.25)


def test_rotation_refuses_a_classifier_that_is_not_frozen():
    with pytest.raises(ValueError, match="frozen"):
        ClassifierRotation([create_classifier("small-cnn", width=4)])


# ---------------------------------------------------------------- training through train_from_config

def _tiny_config(tmp_path, **keys) -> str:
    base = dict(denoiser_kwargs={"in_channels": 1, "depth": 3, "features": 8}, sigma=0.5, epochs=1,
                batch_size=40, train_dataset="digits:train", cpu=True, num_threads=1,
                output_dir=str(tmp_path / "run"))
    base.update(keys)
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base))
    return str(path)


class Recorder(nn.Module):
    """A frozen small-cnn that records its name each time it is called."""

    def __init__(self, name: str, calls: list[str], seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inner = create_classifier("small-cnn", width=4, image_size=8)
        self.name, self.calls = name, calls

    def forward(self, x):
        self.calls.append(self.name)
        return self.inner(x)


def test_stab_training_leaves_the_classifier_bitwise_unchanged(tmp_path, monkeypatch):
    import denoisers.training as training

    calls: list[str] = []
    clf = Recorder("target", calls, seed=0)
    snapshot = {k: v.clone() for k, v in clf.state_dict().items()}
    monkeypatch.setattr(training, "build_classifier", lambda entry: clf)
    init = tmp_path / "init"
    torch.manual_seed(0)
    _trained_like(DnCNN(1, depth=3, features=8, sigma=0.5)).save_pretrained(init)
    out = training.train_from_config(_tiny_config(tmp_path, objective="stab+mse", init_from=str(init),
                                                  classifiers=["small-cnn"], lr=1e-2, max_steps=6,
                                                  denoiser_kwargs={}))
    assert calls, "the classifier was never used"
    assert not clf.training and not any(p.requires_grad for p in clf.parameters())
    after = clf.state_dict()
    assert set(after) == set(snapshot)
    assert all(torch.equal(after[k], snapshot[k]) for k in snapshot)
    before_den = TrainedDenoiser.from_pretrained(init).state_dict()
    after_den = create_denoiser(f"dncnn:{out}")
    assert after_den.provenance["objective"] == "stab+mse"
    changed = [k for k, v in after_den.state_dict().items() if not torch.equal(v, before_den[k])]
    assert any(k.endswith("weight") for k in changed)


def test_black_box_rotates_surrogates_per_minibatch(tmp_path, monkeypatch):
    import denoisers.training as training

    calls: list[str] = []
    made = iter([Recorder("a", calls, 1), Recorder("b", calls, 2), Recorder("target", calls, 3)])
    monkeypatch.setattr(training, "build_classifier", lambda entry: next(made))
    training.train_from_config(_tiny_config(tmp_path, objective="stab", classifiers=["small-cnn", "small-cnn"],
                                            eval_classifier="small-cnn", max_steps=5))
    # STAB calls the surrogate twice per minibatch (clean prediction, denoised); the target never trains
    assert calls == ["a", "a", "b", "b", "a", "a", "b", "b", "a", "a"]


def test_stab_mse_requires_an_initial_checkpoint(tmp_path):
    from denoisers.training import train_from_config

    with pytest.raises(ValueError, match="init_from"):
        train_from_config(_tiny_config(tmp_path, objective="stab+mse", classifiers=["small-cnn"]))
    with pytest.raises(ValueError, match="needs at least one entry in 'classifiers'"):
        train_from_config(_tiny_config(tmp_path, objective="stab"))
    with pytest.raises(ValueError, match="unknown key"):
        train_from_config(_tiny_config(tmp_path, sigmaa=0.3))


# ---------------------------------------------------------------- what ships

SHIPPED = sorted(p.name for p in (ROOT / "denoisers" / "pretrained").glob("dncnn.mnist5k_*"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_denoisers_denoise_and_help_the_classifier(name, mnist_test):
    den = create_denoiser(name)
    assert den.sigma == {"s025": 0.25, "s050": 0.5}[name.split("_")[1]]
    assert den.provenance["objective"] == ("stab+mse" if name.endswith("stabmse") else "mse")
    folder = ROOT / "denoisers" / "pretrained" / name
    assert {p.suffix for p in folder.iterdir()} >= {".json", ".safetensors", ".yaml"}
    x, y = mnist_test
    m = evaluate_denoiser(den, create_classifier("small-cnn.mnist5k"), [(x, y)], den.sigma, seed=7)
    assert m["psnr_denoised"] > m["psnr_noisy"] + 5
    assert m["acc_denoised"] > m["acc_noisy"]

