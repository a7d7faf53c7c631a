"""Training with Accelerate: multi-process launch, resume, every shipped config on stand-in data, the classifier trainer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from classifiers import create_classifier
from certify.training import load_training_state
from classifiers.training import train_classifier_from_config
from denoisers import create_denoiser
from denoisers.dncnn import DnCNN
from denoisers.training import DENOISER_DEFAULTS, train_from_config
from processes import ACCELERATE, launch_env

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"


def write_yaml(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def tiny(tmp_path: Path, **keys) -> dict:
    cfg = dict(denoiser_kwargs={"in_channels": 1, "depth": 3, "features": 8}, sigma=0.5, epochs=1,
               batch_size=64, train_dataset="digits:train", eval_dataset="digits:test", cpu=True,
               num_threads=1, output_dir=str(tmp_path / "run"))
    cfg.update(keys)
    return cfg


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_writes_a_loadable_checkpoint(tmp_path):
    config = write_yaml(tmp_path / "tiny.yaml", tiny(tmp_path, export_dir=str(tmp_path / "export"),
                                                     summary="tiny", family="dncnn"))
    env = launch_env()
    # `--cpu --num_processes 2` would start ONE process in accelerate 1.x (its simple launcher, no torchrun);
    # `--multi_gpu` goes through torchrun, and `cpu: true` in the config puts both ranks on the CPU (gloo).
    cmd = [*ACCELERATE, str(ROOT / "recipes" / "train_denoiser.py"), "--config", config]
    # about 20 s on an idle 2-core machine (mostly three interpreters importing torch); the timeout only
    # guards against a hang, e.g. processes waiting on each other at a barrier
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = create_denoiser(f"dncnn:{tmp_path / 'run'}")
    assert model.sigma == 0.5 and model.provenance["objective"] == "mse"
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]  # written once, by the main process only
    # each process saw half of the 1,437 training digits: ceil(719 / 64) = 12 steps
    assert records[0]["steps"] == 12
    assert json.loads((tmp_path / "export" / "bundle.json").read_text()) == {"family": "dncnn", "summary": "tiny"}
    assert create_denoiser(f"dncnn:{tmp_path / 'export'}").sigma == 0.5


def test_resume_continues_epochs_and_optimizer_state(tmp_path):
    one = write_yaml(tmp_path / "c.yaml", tiny(tmp_path, epochs=1))
    out = train_from_config(one)
    first = load_training_state(out)
    assert first["epoch"] == 0 and first["steps"] == 23  # ceil(1437 / 64)
    write_yaml(tmp_path / "c.yaml", tiny(tmp_path, epochs=3))
    train_from_config(str(tmp_path / "c.yaml"), resume=True)
    state = load_training_state(out)
    assert state["epoch"] == 2 and state["steps"] == 69
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {69}  # the optimizer's own counter went on from the saved state, not from 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert create_denoiser(f"dncnn:{out}").provenance["training"]["epochs_done"] == 3


def test_resume_without_a_finished_epoch_starts_fresh(tmp_path):
    out = train_from_config(write_yaml(tmp_path / "c.yaml", tiny(tmp_path, max_steps=2)), resume=True)
    assert load_training_state(out)["steps"] == 2


@pytest.fixture(scope="module")
def rgb_standin(tmp_path_factory) -> str:
    """A tiny hub-format dataset (save_to_disk) of random RGB images of mixed sizes, with a ClassLabel."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(32, 32), (40, 36), (36, 48), (32, 32), (44, 40), (32, 40), (32, 32), (48, 32)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    ds = datasets.Dataset.from_dict({"img": images, "label": [i % 10 for i in range(8)]}, features=features)
    folder = tmp_path_factory.mktemp("hf") / "standin"
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(folder))
    return str(folder)


# the denoiser training configs for GPU users (other configs in the folder belong to other recipes)
GPU_CONFIGS = sorted(p.name for p in CONFIGS.glob("dncnn*.yaml") if "cifar10" in p.name or "imagenet" in p.name)


def test_there_are_cifar10_and_imagenet_configs():
    assert any("cifar10" in n for n in GPU_CONFIGS) and any("imagenet" in n for n in GPU_CONFIGS)


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_paper_configs_run_two_steps_on_standin_data(name, tmp_path, rgb_standin):
    """Each paper config as written, with only its data, classifiers and output swapped for stand-ins.

    The hub datasets and torchvision weights cannot be downloaded here; everything else (the
    architecture, objective, sigma, optimizer settings, classifier rotation) runs as configured.
    """
    cfg = yaml.safe_load((CONFIGS / name).read_text())
    assert set(cfg) <= set(DENOISER_DEFAULTS)
    standin_classifier = {"spec": "small-cnn", "kwargs": {"in_channels": 3, "width": 4, "image_size": 32}}
    overrides = dict(train_dataset=f"hf:{rgb_standin}:train", eval_dataset=f"hf:{rgb_standin}:test",
                     image_size=32, batch_size=4, max_steps=2, num_workers=0, cpu=True, num_threads=1,
                     mixed_precision="no", eval_max=4, output_dir=str(tmp_path / "run"), export_dir=None,
                     classifiers=[standin_classifier] * len(cfg.get("classifiers") or []),
                     eval_classifier=standin_classifier)
    if cfg.get("init_from"):
        init = tmp_path / "init"
        family = cfg.get("family", "dncnn")
        create_denoiser(family, in_channels=3, sigma=cfg["sigma"]).save_pretrained(init)
        overrides["init_from"] = str(init)
    out = train_from_config(write_yaml(tmp_path / name, {**cfg, **overrides}))
    assert load_training_state(out)["steps"] == 2
    model = create_denoiser(f"dncnn:{out}")
    assert model.sigma == cfg["sigma"] and model.provenance["objective"] == cfg["objective"]
    expected_features = 128 if "wide" in name else 64
    assert model.arch_config["features"] == expected_features and model.arch_config["depth"] == 17


def test_classifier_trainer_learns_and_saves(tmp_path):
    cfg = dict(classifier={"spec": "small-cnn", "kwargs": {"width": 8, "image_size": 8}}, train_dataset="digits:train",
               eval_dataset="digits:test", epochs=3, batch_size=64, lr=3e-3, cpu=True, num_threads=1,
               output_dir=str(tmp_path / "clf"), export_dir=str(tmp_path / "export"), family="small-cnn",
               summary="digits")
    out = train_classifier_from_config(write_yaml(tmp_path / "clf.yaml", cfg))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["eval_accuracy"] > 0.5  # 10 classes: chance is 0.1
    clf = create_classifier(f"small-cnn:{tmp_path / 'export'}")
    assert clf.model[0].weight.dtype == torch.float32 and clf.num_classes == 10
    assert (tmp_path / "export" / "clf.yaml").is_file()


# ---------------------------------------------------------------- what ships

SHIPPED = sorted(p.name for p in (ROOT / "denoisers" / "pretrained").glob("dncnn.mnist5k_*"))


@pytest.fixture(scope="module")
def mnist_test():
    from certify.data import create_dataset

    ds = create_dataset("mnist5k:test")
    xs, ys = zip(*(ds[i] for i in range(0, 1000, 4)))
    return torch.stack(xs), torch.tensor(ys)


def test_shipped_classifier_is_accurate(mnist_test):
    clf = create_classifier("small-cnn.mnist5k")
    x, y = mnist_test
    with torch.no_grad():
        acc = float((clf(x).argmax(1) == y).float().mean())
    assert acc > 0.95


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_denoisers_denoise_and_help_the_classifier(name, mnist_test):
    from denoisers.training import evaluate_denoiser

    den = create_denoiser(name)
    assert den.sigma == {"s025": 0.25, "s050": 0.5}[name.split("_")[1]]
    assert den.provenance["objective"] == ("stab+mse" if name.endswith("stabmse") else "mse")
    folder = ROOT / "denoisers" / "pretrained" / name
    assert {p.suffix for p in folder.iterdir()} >= {".json", ".safetensors", ".yaml"}
    x, y = mnist_test
    m = evaluate_denoiser(den, create_classifier("small-cnn.mnist5k"), [(x, y)], den.sigma, seed=7)
    assert m["psnr_denoised"] > m["psnr_noisy"] + 5
    assert m["acc_denoised"] > m["acc_noisy"]


def test_check_ranks_agree_catches_desynchronised_weights():
    from certify.training import check_ranks_agree

    class TwoRanks:  # what Accelerate's gather would return from two processes
        num_processes, device = 2, "cpu"

        def __init__(self, drift):
            self.drift = drift

        def unwrap_model(self, model):
            return model

        def gather(self, t):
            return torch.cat([t, t + self.drift])

    model = torch.nn.Linear(3, 2)
    check_ranks_agree(TwoRanks(0.0), model)
    with pytest.raises(RuntimeError, match="gradients were not synchronised"):
        check_ranks_agree(TwoRanks(1e-6), model)


@pytest.mark.slow
def test_ddpm_recipe_two_processes_then_resume(tmp_path):
    """recipes/train_ddpm.py under `accelerate launch` with two CPU processes: weights stay in sync
    (checked before every checkpoint), the main process exports, and --resume continues the epochs."""
    cfg = {
        "summary": "tiny", "output_dir": str(tmp_path / "run"), "export_dir": str(tmp_path / "export"),
        "train_dataset": "digits", "seed": 0,
        "unet": {"sample_size": 8, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
                 "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "DownBlock2D"],
                 "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "add_attention": False},
        "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"},
        "epochs": 1, "batch_size": 60, "lr": 0.001, "num_threads": 1, "timestep_sigma_range": [0.12, 1.0],
    }
    config = write_yaml(tmp_path / "ddpm.yaml", cfg)
    launch = [*ACCELERATE, str(ROOT / "recipes" / "train_ddpm.py"), "--config", config]
    env = launch_env()
    proc = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_training_state(tmp_path / "run")
    assert state["epoch"] == 0
    # 360 digits, two processes, batch 60: 3 steps each per epoch (the EMA counts them)
    assert state["steps"] == 3 and state["extra"]["ema_step"] == 3
    assert create_denoiser(f"ddpm:{tmp_path / 'export'}")(torch.rand(2, 1, 8, 8), 0.25).shape == (2, 1, 8, 8)
    assert create_denoiser(f"ddpm:{tmp_path / 'run'}")(torch.rand(2, 1, 8, 8), 0.25).shape == (2, 1, 8, 8)
    assert json.loads((tmp_path / "export" / "bundle.json").read_text()) == {"family": "ddpm", "summary": "tiny"}

    cfg["epochs"] = 2
    write_yaml(tmp_path / "ddpm.yaml", cfg)
    proc = subprocess.run(launch + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_training_state(tmp_path / "run")
    assert (state["epoch"], state["steps"], state["extra"]["ema_step"]) == (1, 6, 6)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]