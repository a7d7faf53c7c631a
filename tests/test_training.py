"""certify/training.py and the trainers on it (denoisers/training.py, ddpm_training.py, classifiers/training.py):
two processes under `accelerate launch` (one log, half the data each, weights in sync, the main process exports),
resume (epochs and optimizer state go on), every paper config for two steps on stand-in data, the classifier
trainer learns; absurd sigma and a NaN loss refused, outputs never inside the package, command-line overrides,
init_from in a fresh process, Accelerate's own precision setting kept. (What ships: test_classifiers.py,
test_denoisers_trained.py; the launch helpers: test_launch.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import denoisers.training as training
from certify.cli import main
from certify.training import COMMON_DEFAULTS, check_ranks_agree, load_training_config, load_training_state
from classifiers import create_classifier
from classifiers.training import train_classifier_from_config
from denoisers import create_denoiser
from denoisers.ddpm_training import DDPM_DEFAULTS, train_ddpm_from_config
from denoisers.training import DENOISER_DEFAULTS, train_from_config
from fixtures import ACCELERATE, CONFIGS, DSMOOTH, ROOT, launch_env


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


def test_resume_without_a_finished_epoch_starts_fresh_and_says_so(tmp_path, caplog):
    out = train_from_config(write_yaml(tmp_path / "c.yaml", tiny(tmp_path, max_steps=2)), resume=True)
    assert load_training_state(out)["steps"] == 2
    assert "holds no finished epoch to resume from; starting from scratch" in caplog.text  # a warning: seen


def test_a_second_run_into_a_finished_run_folder_is_refused_not_overwritten(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", tiny(tmp_path, max_steps=2))
    out = train_from_config(config)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match=r"run already holds a training run \(training_state.pt, log.jsonl\); "
                                         r"pass --resume"):
        train_from_config(config)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_trained_denoiser_loads_by_its_architecture_in_a_fresh_process(tmp_path):
    """`train-denoiser --resume` once failed with "expected one of []": the run folder was read before any
    architecture's module had registered it."""
    create_denoiser("dncnn", in_channels=1, depth=3, features=4, sigma=0.5).save_pretrained(tmp_path / "d")
    code = f"from denoisers.trained import TrainedDenoiser; print(TrainedDenoiser.from_pretrained({str(tmp_path / 'd')!r}).sigma)"
    proc = subprocess.run([sys.executable, "-c", code], env=launch_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "0.5", proc.stderr[-2000:]


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


def test_check_ranks_agree_catches_desynchronised_weights():
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



# -- refusals, outputs, overrides ----------------------------------------------------------------------------
def two_steps(tmp_path: Path, **keys) -> Path:
    """A denoiser config file for two steps on digits (3 layers, 4 features)."""
    cfg = dict(denoiser_kwargs={"in_channels": 1, "depth": 3, "features": 4}, sigma=0.5, epochs=1, batch_size=64,
               train_dataset="digits:train", cpu=True, num_threads=1, max_steps=2, output_dir=str(tmp_path / "run"))
    cfg.update(keys)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("sigma", [".inf", ".nan", "1.0e+39", "-0.5", "0"])
def test_train_denoiser_refuses_absurd_sigma_with_one_line(tmp_path, capsys, sigma):
    config = two_steps(tmp_path)
    config.write_text(config.read_text().replace("sigma: 0.5", f"sigma: {sigma}"))
    assert main(["train-denoiser", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "sigma" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written, no NaN checkpoint


def test_non_finite_loss_stops_training_without_saving(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "denoiser_loss",
                        lambda objective, denoiser, clean, labels, sigma, clf: denoiser(clean, sigma).sum() * float("nan"))
    with pytest.raises(ValueError, match="loss became nan at epoch 1, step 1"):
        train_from_config(str(two_steps(tmp_path)))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_shipped_configs_never_write_into_the_package():
    for config in sorted((ROOT / "recipes" / "configs").glob("*.yaml")):
        raw = yaml.safe_load(config.read_text())
        if "train_dataset" not in raw:  # certification / compare configs
            continue
        cfg = load_training_config(config, {**DENOISER_DEFAULTS, **DDPM_DEFAULTS, **COMMON_DEFAULTS,
                                            "classifier": None, "noise_sigma": 0.0})
        for key in ("output_dir", "export_dir"):
            if cfg[key]:
                assert not str(Path(cfg[key])).startswith(("denoisers", "classifiers", "certify")), (config, key)


def test_a_config_pointing_into_the_package_is_refused_unless_named_on_the_command_line(tmp_path):
    config = two_steps(tmp_path, export_dir=str(ROOT / "denoisers" / "pretrained" / "dncnn.mnist5k_s025_mse"))
    with pytest.raises(ValueError, match="inside the installed package.*--export-dir"):
        load_training_config(config, DENOISER_DEFAULTS)
    cfg = load_training_config(config, DENOISER_DEFAULTS, {"export_dir": str(tmp_path / "x")})
    assert cfg["export_dir"] == str(tmp_path / "x")


SHIPPED_DNCNN = ROOT / "denoisers" / "pretrained" / "dncnn.mnist5k_s025_mse"


def _files(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("spelling", ["denoisers/pretrained/dncnn.mnist5k_s025_mse",
                                      "denoisers/pretrained/dncnn.mnist5k_s025_mse/",
                                      "recipes/../denoisers/./pretrained/dncnn.mnist5k_s025_mse", str(SHIPPED_DNCNN)])
def test_the_output_dir_flag_never_points_into_a_shipped_model(tmp_path, monkeypatch, capsys, spelling):
    """Issue 25 item 11: --output-dir overwrote the shipped model with a 5-step one and left training_state.pt
    and log.jsonl beside it; only --export-dir refreshes shipped weights (and writes no training state)."""
    monkeypatch.chdir(ROOT)
    before = _files(SHIPPED_DNCNN)
    assert main(["train-denoiser", "--config", str(two_steps(tmp_path)), "--output-dir", spelling]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dsmooth train-denoiser: error: output_dir {spelling!r} lies inside the installed "
                          f"package ({ROOT / 'denoisers'})"), err
    assert f"refreshed with --export-dir {spelling} (weights only)" in err and err.count("\n") == 1
    assert _files(SHIPPED_DNCNN) == before


def test_every_trainer_refuses_a_run_folder_in_the_package_from_a_config_or_the_command_line(tmp_path):
    minimal = tmp_path / "m.yaml"
    for train in (train_from_config, train_classifier_from_config, train_ddpm_from_config):
        for where in ({"output_dir": str(SHIPPED_DNCNN)}, {}):  # the config key, the command line (overrides)
            minimal.write_text(yaml.safe_dump({"train_dataset": "digits:train", "max_steps": 1, "cpu": True, **where}))
            with pytest.raises(ValueError, match=r"^output_dir .* lies inside the installed package"):
                train(str(minimal), overrides={} if where else {"output_dir": str(SHIPPED_DNCNN)})


def test_a_symlink_or_a_copy_of_a_shipped_model_is_no_run_folder(tmp_path):
    (tmp_path / "link").symlink_to(SHIPPED_DNCNN, target_is_directory=True)
    (tmp_path / "pretrained").symlink_to(SHIPPED_DNCNN.parent, target_is_directory=True)
    config = two_steps(tmp_path)
    for path in (tmp_path / "link", tmp_path / "pretrained" / SHIPPED_DNCNN.name, tmp_path / "pretrained" / "new"):
        with pytest.raises(ValueError, match=r"^output_dir .* lies inside the installed package"):
            load_training_config(config, DENOISER_DEFAULTS, {"output_dir": str(path)})
    # a source checkout that is not the imported one: its shipped models are known by their bundle.json
    copy = tmp_path / "checkout" / "denoisers" / "pretrained" / SHIPPED_DNCNN.name
    shutil.copytree(SHIPPED_DNCNN, copy)
    for path in (copy, copy / "sub"):
        with pytest.raises(ValueError, match=rf"^output_dir .* lies in the exported model {copy} \(bundle.json\)"):
            load_training_config(config, DENOISER_DEFAULTS, {"output_dir": str(path)})
    # --export-dir may refresh the shipped model on purpose, but an export is never the run folder
    assert load_training_config(config, DENOISER_DEFAULTS, {"export_dir": str(tmp_path / "link")})["export_dir"]
    with pytest.raises(ValueError, match="export_dir .* is the run folder"):
        load_training_config(config, DENOISER_DEFAULTS, {"export_dir": str(tmp_path / "run") + "/"})


def test_output_dir_defaults_under_runs(tmp_path):
    config = two_steps(tmp_path)
    raw = yaml.safe_load(config.read_text())
    del raw["output_dir"]
    config.write_text(yaml.safe_dump(raw))
    assert load_training_config(config, DENOISER_DEFAULTS)["output_dir"] == "runs/c"


def test_cli_overrides_and_init_from_a_folder_in_a_fresh_process(tmp_path, capsys):
    """--output-dir, --epochs and --max-steps override the config; init_from a folder works in a fresh process
    (before, the architectures were not registered yet there: "expected one of []"); --help lists the flags."""
    create_denoiser("dncnn", in_channels=1, depth=3, features=4, sigma=0.5).save_pretrained(tmp_path / "init")
    raw = yaml.safe_load(two_steps(tmp_path, max_steps=None, epochs=50).read_text())
    del raw["denoiser_kwargs"]
    raw.update(init_from=str(tmp_path / "init"), objective="mse")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "elsewhere"
    proc = subprocess.run([*DSMOOTH, "train-denoiser", "--config", str(tmp_path / "c.yaml"), "--output-dir", str(out),
                           "--epochs", "1", "--max-steps", "1"], capture_output=True, text=True,
                          env=launch_env(), cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert create_denoiser(f"dncnn:{out}").sigma == 0.5 and not (tmp_path / "run").exists()
    args = [*DSMOOTH, "train-denoiser", "--config", str(tmp_path / "c.yaml"), "--output-dir", str(out), "--epochs", "2"]
    run = lambda *more: subprocess.run([*args, *more], capture_output=True, text=True, env=launch_env(),  # noqa: E731
                                       cwd=tmp_path, timeout=180)
    again = run("--max-steps", "1")  # the same folder without --resume: refused in one line, nothing replaced
    assert again.returncode == 2 and again.stderr.splitlines()[-1].endswith("pass --resume to go on from it, or "
                                                                            "choose another output_dir (--output-dir)")
    resumed = run("--max-steps", "2", "--resume")  # in a fresh process (it once failed: "expected one of []")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert create_denoiser(f"dncnn:{out}").provenance["training"]["epochs_done"] == 2
    recipe = subprocess.run([sys.executable, str(ROOT / "recipes" / "train_denoiser.py"), "--config", "nowhere.yaml"],
                            capture_output=True, text=True, env=launch_env(), cwd=tmp_path, timeout=180)
    assert recipe.returncode == 2 and recipe.stderr.startswith("train_denoiser.py: error: ") and \
        len(recipe.stderr.splitlines()) == 1, recipe.stderr[-2000:]
    with pytest.raises(SystemExit):
        main(["train-denoiser", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--output-dir", "--export-dir", "--epochs", "--max-steps", "--resume", "--config"):
        assert flag in help_text


def test_accelerate_precision_setting_is_not_overridden(tmp_path):
    code = ("from certify.training import make_accelerator, COMMON_DEFAULTS\n"
            "print(make_accelerator({**COMMON_DEFAULTS, 'cpu': True}).mixed_precision)\n"
            "from accelerate.state import AcceleratorState; AcceleratorState._reset_state(True)\n"
            "print(make_accelerator({**COMMON_DEFAULTS, 'cpu': True, 'mixed_precision': 'no'}).mixed_precision)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=launch_env(ACCELERATE_MIXED_PRECISION="bf16"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["bf16", "no"]  # the environment's setting, unless the config sets one

