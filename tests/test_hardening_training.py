"""Issue 13, training items: absurd sigma and NaN loss refused, outputs never inside the package,
command-line overrides, init_from a folder in a fresh process, Accelerate's own precision, launches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from certify.cli import main
from certify.launch import requested_processes
from certify.training import COMMON_DEFAULTS, load_training_config
from denoisers import create_denoiser
from denoisers.training import DENOISER_DEFAULTS, train_from_config

ROOT = Path(__file__).resolve().parents[1]
DSMOOTH = [sys.executable, "-m", "certify.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny(tmp_path: Path, **keys) -> Path:
    cfg = dict(denoiser_kwargs={"in_channels": 1, "depth": 3, "features": 4}, sigma=0.5, epochs=1, batch_size=64,
               train_dataset="digits:train", cpu=True, num_threads=1, max_steps=2, output_dir=str(tmp_path / "run"))
    cfg.update(keys)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("sigma", [".inf", ".nan", "1.0e+39", "-0.5", "0"])
def test_train_denoiser_refuses_absurd_sigma_with_one_line(tmp_path, sigma):
    config = tiny(tmp_path)
    config.write_text(config.read_text().replace("sigma: 0.5", f"sigma: {sigma}"))
    proc = subprocess.run([*DSMOOTH, "train-denoiser", "--config", str(config)], capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "sigma" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written, no NaN checkpoint


def test_non_finite_loss_stops_training_without_saving(tmp_path, monkeypatch):
    import denoisers.training as training

    monkeypatch.setattr(training, "denoiser_loss",
                        lambda objective, denoiser, clean, labels, sigma, clf: denoiser(clean, sigma).sum() * float("nan"))
    with pytest.raises(ValueError, match="loss became nan at epoch 1, step 1"):
        train_from_config(str(tiny(tmp_path)))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_shipped_configs_never_write_into_the_package():
    for config in sorted((ROOT / "recipes" / "configs").glob("*.yaml")):
        raw = yaml.safe_load(config.read_text())
        if "train_dataset" not in raw:  # certification / compare configs
            continue
        from denoisers.ddpm_training import DDPM_DEFAULTS

        cfg = load_training_config(config, {**DENOISER_DEFAULTS, **DDPM_DEFAULTS, **COMMON_DEFAULTS,
                                            "classifier": None, "noise_sigma": 0.0})
        for key in ("output_dir", "export_dir"):
            if cfg[key]:
                assert not str(Path(cfg[key])).startswith(("denoisers", "classifiers", "certify")), (config, key)


def test_a_config_pointing_into_the_package_is_refused_unless_named_on_the_command_line(tmp_path):
    config = tiny(tmp_path, export_dir=str(ROOT / "denoisers" / "pretrained" / "dncnn.mnist5k_s025_mse"))
    with pytest.raises(ValueError, match="inside the installed package.*--export-dir"):
        load_training_config(config, DENOISER_DEFAULTS)
    cfg = load_training_config(config, DENOISER_DEFAULTS, {"export_dir": str(tmp_path / "x")})
    assert cfg["export_dir"] == str(tmp_path / "x")


SHIPPED = ROOT / "denoisers" / "pretrained" / "dncnn.mnist5k_s025_mse"


def _files(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("spelling", ["denoisers/pretrained/dncnn.mnist5k_s025_mse",
                                      "denoisers/pretrained/dncnn.mnist5k_s025_mse/",
                                      "recipes/../denoisers/./pretrained/dncnn.mnist5k_s025_mse", str(SHIPPED)])
def test_the_output_dir_flag_never_points_into_a_shipped_model(tmp_path, monkeypatch, capsys, spelling):
    """Issue 25 item 11: --output-dir overwrote the shipped model with a 5-step one and left training_state.pt
    and log.jsonl beside it; only --export-dir refreshes shipped weights (and writes no training state)."""
    monkeypatch.chdir(ROOT)
    before = _files(SHIPPED)
    assert main(["train-denoiser", "--config", str(tiny(tmp_path)), "--output-dir", spelling]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dsmooth train-denoiser: error: output_dir {spelling!r} lies inside the installed "
                          f"package ({ROOT / 'denoisers'})"), err
    assert f"refreshed with --export-dir {spelling} (weights only)" in err and err.count("\n") == 1
    assert _files(SHIPPED) == before


def test_every_trainer_refuses_a_run_folder_in_the_package_from_a_config_or_the_command_line(tmp_path):
    from classifiers.training import train_classifier_from_config
    from denoisers.ddpm_training import train_ddpm_from_config

    minimal = tmp_path / "m.yaml"
    for train in (train_from_config, train_classifier_from_config, train_ddpm_from_config):
        for where in ({"output_dir": str(SHIPPED)}, {}):  # the config key, the command line (overrides)
            minimal.write_text(yaml.safe_dump({"train_dataset": "digits:train", "max_steps": 1, "cpu": True, **where}))
            with pytest.raises(ValueError, match=r"^output_dir .* lies inside the installed package"):
                train(str(minimal), overrides={} if where else {"output_dir": str(SHIPPED)})


def test_a_symlink_or_a_copy_of_a_shipped_model_is_no_run_folder(tmp_path):
    import shutil

    (tmp_path / "link").symlink_to(SHIPPED, target_is_directory=True)
    (tmp_path / "pretrained").symlink_to(SHIPPED.parent, target_is_directory=True)
    config = tiny(tmp_path)
    for path in (tmp_path / "link", tmp_path / "pretrained" / SHIPPED.name, tmp_path / "pretrained" / "new"):
        with pytest.raises(ValueError, match=r"^output_dir .* lies inside the installed package"):
            load_training_config(config, DENOISER_DEFAULTS, {"output_dir": str(path)})
    # a source checkout that is not the imported one: its shipped models are known by their bundle.json
    copy = tmp_path / "checkout" / "denoisers" / "pretrained" / SHIPPED.name
    shutil.copytree(SHIPPED, copy)
    for path in (copy, copy / "sub"):
        with pytest.raises(ValueError, match=rf"^output_dir .* lies in the exported model {copy} \(bundle.json\)"):
            load_training_config(config, DENOISER_DEFAULTS, {"output_dir": str(path)})
    # --export-dir may refresh the shipped model on purpose, but an export is never the run folder
    assert load_training_config(config, DENOISER_DEFAULTS, {"export_dir": str(tmp_path / "link")})["export_dir"]
    with pytest.raises(ValueError, match="export_dir .* is the run folder"):
        load_training_config(config, DENOISER_DEFAULTS, {"export_dir": str(tmp_path / "run") + "/"})


def test_output_dir_defaults_under_runs(tmp_path):
    config = tiny(tmp_path)
    raw = yaml.safe_load(config.read_text())
    del raw["output_dir"]
    config.write_text(yaml.safe_dump(raw))
    assert load_training_config(config, DENOISER_DEFAULTS)["output_dir"] == "runs/c"


def test_cli_overrides_and_help(tmp_path):
    config = tiny(tmp_path, max_steps=None, epochs=50)
    out = tmp_path / "elsewhere"
    proc = subprocess.run([*DSMOOTH, "train-denoiser", "--config", str(config), "--output-dir", str(out),
                           "--epochs", "1", "--max-steps", "1"], capture_output=True, text=True, env=ENV,
                          cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert create_denoiser(f"dncnn:{out}").sigma == 0.5 and not (tmp_path / "run").exists()
    help_text = subprocess.run([*DSMOOTH, "train-denoiser", "--help"], capture_output=True, text=True,
                               env=ENV, timeout=60).stdout
    for flag in ("--output-dir", "--export-dir", "--epochs", "--max-steps", "--resume", "--config"):
        assert flag in help_text


def test_init_from_a_folder_works_in_a_fresh_process(tmp_path):
    # Before, the architectures were not registered yet in a fresh process: "expected one of []".
    create_denoiser("dncnn", in_channels=1, depth=3, features=4, sigma=0.5).save_pretrained(tmp_path / "init")
    raw = yaml.safe_load(tiny(tmp_path).read_text())
    del raw["denoiser_kwargs"]
    raw.update(init_from=str(tmp_path / "init"), objective="mse")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([*DSMOOTH, "train-denoiser", "--config", str(tmp_path / "c.yaml")], capture_output=True,
                          text=True, env=ENV, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_accelerate_precision_setting_is_not_overridden(tmp_path):
    code = ("from certify.training import make_accelerator, COMMON_DEFAULTS\n"
            "print(make_accelerator({**COMMON_DEFAULTS, 'cpu': True}).mixed_precision)\n"
            "from accelerate.state import AcceleratorState; AcceleratorState._reset_state(True)\n"
            "print(make_accelerator({**COMMON_DEFAULTS, 'cpu': True, 'mixed_precision': 'no'}).mixed_precision)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**ENV, "ACCELERATE_MIXED_PRECISION": "bf16"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["bf16", "no"]  # the environment's setting, unless the config sets one


def test_requested_processes_reads_launch_command_lines():
    assert requested_processes(["python", "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                                "x.py"]) == 2
    assert requested_processes(["accelerate", "launch", "--num_processes=3", "x.py"]) == 3
    assert requested_processes(["python", "x.py"]) is None


@pytest.mark.slow
def test_accelerate_cpu_launch_of_two_processes_says_how_to_get_two(tmp_path):
    torch.manual_seed(0)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "certify.cli", "certify",
           "--classifier", "small-cnn", "--classifier-arg", "image_size=8", "--classifier-arg", "in_channels=1",
           "--dataset", "digits:test", "--sigma", "0.5", "--n0", "5", "--n", "20", "--batch", "20", "--max", "2",
           "--out", str(tmp_path / "r.tsv"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "asked for 2 processes but started only this one" in proc.stderr
    assert "--multi_gpu --num_processes 2" in proc.stderr


def test_certify_recipe_example_config_exists_and_parses():
    from certify.settings import RunSettings

    doc = (ROOT / "recipes" / "certify_dataset.py").read_text()
    cited = [w for w in doc.split() if w.startswith("recipes/configs/")]
    assert cited
    for path in cited:
        config = yaml.safe_load((ROOT / path).read_text())
        config.pop("out"), config.pop("device", None)
        RunSettings.from_dict(config)
