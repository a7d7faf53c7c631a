"""Issue 25, item 12: what a run lacks is listed at once, before anything loads; offline, no retry loops."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from certify.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def retry_warnings(*texts: str) -> int:
    """How many of huggingface_hub's retry lines the output holds."""
    return sum(line.count("Retrying in") + line.count("thrown while requesting") for text in texts
               for line in text.splitlines())


@pytest.fixture
def sandbox(monkeypatch, tmp_path):
    """Empty Hugging Face and torch caches under tmp_path, the libraries online as far as they know, and every
    change to the offline switches undone afterwards."""
    import datasets
    import huggingface_hub

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "0")  # recorded, so that the probe's "1" is undone too
        monkeypatch.delenv(var)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


@pytest.fixture
def unreachable(sandbox, monkeypatch):
    """No host answers the probe (whatever the network of the machine running the tests)."""
    from certify import libraries

    monkeypatch.setattr(libraries, "probe", lambda *args, **kwargs: False)
    return sandbox


def without_package(monkeypatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == name else real(n, *a, **k))


def test_check_lists_every_missing_weight_dataset_and_package_at_once(unreachable, monkeypatch, capsys, caplog):
    without_package(monkeypatch, "guided_diffusion")
    config = unreachable / "paper.yaml"
    config.write_text(f"dataset: imagefolder:{unreachable / 'imagenet' / 'val'}\nn: 100\npipelines:\n"
                      "  - {name: a, classifier: 'hf:someone/not-cached', denoiser: 'adm:imagenet256-uncond', sigma: 0.25}\n"
                      "  - {name: b, classifier: 'timm:resnet18', denoiser: 'adm:imagenet256-uncond', sigma: 0.5}\n")
    with caplog.at_level(logging.WARNING):
        code = main(["check", "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "5 problems, nothing loaded:"
    expected = ["pipelines[0] classifier hf:someone/not-cached: the model (someone/not-cached): not in the Hugging Face cache",
                "pipelines[0,1] denoiser adm:imagenet256-uncond: package guided_diffusion missing: pip install "
                "'denoised-smoothing[adm]'",
                f"pipelines[0,1] denoiser adm:imagenet256-uncond: the weights file is not in torch's hub cache "
                f"({unreachable / 'torch' / 'hub' / 'checkpoints' / '256x256_diffusion_uncond.pt'})",
                f"dataset imagefolder:{unreachable / 'imagenet' / 'val'}: no such folder",
                "pipelines[1] classifier timm:resnet18: pretrained weights (timm/resnet18.a1_in1k): not in the "
                "Hugging Face cache"]
    for text in expected:
        assert sum(line.strip().startswith(text) for line in lines) == 1, (text, out)
    assert "pretrained=false" in out and "adm:/path/to/256x256_diffusion_uncond.pt" in out  # what fixes them
    assert retry_warnings(out, err, caplog.text) == 0


def test_a_run_fails_before_loading_anything_with_the_whole_list(sandbox, monkeypatch, capsys, caplog):
    import huggingface_hub
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user says: no hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    out = sandbox / "r.tsv"
    with caplog.at_level(logging.WARNING):
        code = main(["certify", "--classifier", "timm:resnet18", "--denoiser", "ddpm:someone/not-cached",
                     "--dataset", f"imagefolder:{sandbox / 'missing'}", "--sigma", "0.25", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and not out.exists()
    assert err.startswith("dsmooth certify: error: 3 problems, nothing loaded:")
    for text in ("--classifier timm:resnet18: pretrained weights", "--denoiser ddpm:someone/not-cached: the diffusion model",
                 f"--dataset imagefolder:{sandbox / 'missing'}: no such folder", "--classifier-arg"):
        assert text in err
    assert retry_warnings(err, caplog.text) == 0


def test_cached_hub_weights_load_offline_without_retries(unreachable, capsys, caplog):
    """The probe fails once; the process goes offline and timm reads its cache at once."""
    import huggingface_hub
    import timm

    snapshot = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--timm--resnet10t.c3_in1k"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    (snapshot / "snapshots" / ("0" * 40)).mkdir(parents=True)
    weights = timm.create_model("resnet10t", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()},
              str(snapshot / "snapshots" / ("0" * 40) / "model.safetensors"))
    with caplog.at_level(logging.WARNING):
        assert main(["check", "--classifier", "timm:resnet10t", "--dataset", "digits", "--sigma", "0.25"]) == 0
        from classifiers import create_classifier

        clf = create_classifier("timm:resnet10t")
    assert torch.equal(clf.model.state_dict()["fc.weight"], weights["fc.weight"])
    out, err = capsys.readouterr()
    assert out == "ok\n" and retry_warnings(out, err, caplog.text) == 0


@pytest.mark.parametrize("argv", [["check", "--config", str(CONFIGS / "demo_mnist.yaml")],
                                  ["check", "--classifier", "small-cnn.mnist5k", "--denoiser", "dncnn.mnist5k_s025_mse",
                                   "--dataset", "mnist5k:test", "--sigma", "0.25"]])
def test_a_complete_run_or_config_is_ok(argv, capsys):
    assert main(argv) == 0
    assert capsys.readouterr().out == "ok\n"


def test_each_family_that_needs_files_has_a_check():
    from certify.data import DATASETS
    from classifiers import CLASSIFIERS
    from denoisers import DENOISERS

    for registry, names in ((CLASSIFIERS, ["timm", "torchvision", "hf", "clip", "small-cnn", "efficientnet-lite0"]),
                            (DENOISERS, ["adm", "ddpm", "dncnn", "dncnn-wide", "memnet", "ffdnet"]),
                            (DATASETS, ["imagefolder", "hf", "foolbox", "mnist5k", "digits"])):
        for name in names:
            entry = registry.entry(name)
            assert (entry.check or getattr(entry.factory, "check", None)) is not None, name
    assert DENOISERS.check("dncnn.mnist5k_s025_mse") == []  # shipped weights: their folder is checked
    assert DENOISERS.check("dncnn:/no/such/dir")[0].startswith("no such folder")
