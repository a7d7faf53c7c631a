"""certify/compare.py, `dsmooth compare`: every pipeline on the same images, a table that agrees with its TSVs,
resume, overrides, sequential mode, samples in the report; configs checked before anything is certified (bad
keys, values, YAML, the attack section), every shipped config valid; no file written through a planted link."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from certify.cli import main
from certify.compare import compare_runs, load_compare_config
from classifiers import list_classifiers
from denoisers import list_denoisers
from fixtures import CONFIGS


@pytest.fixture
def config(tmp_path, cnn_dir) -> Path:
    cfg = {
        "name": "tiny", "dataset": "digits:test", "n0": 10, "n": 100, "alpha": 0.01, "batch": 110, "skip": 7,
        "images": 6, "seed": 1, "radii": [0, 0.1, 0.2],
        "pipelines": [
            {"name": "alone", "classifier": f"small-cnn:{cnn_dir}", "sigma": 0.12},
            {"name": "alone-wide", "classifier": f"small-cnn:{cnn_dir}", "denoiser": "none", "sigma": 0.5},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_compare_table_matches_its_tsvs_and_draws_samples(config, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.reader(open(out / "table.csv")))
    header, body = rows[0], rows[1:]
    assert header[:6] == ["run", "sigma", "images", "r=0", "r=0.1", "r=0.2"]
    indices = None
    for name, row in zip(("alone", "alone-wide"), body):
        lines = [l.split("\t") for l in (out / f"{name}.tsv").read_text().splitlines()[1:]]
        idx = [int(l[0]) for l in lines]
        indices = indices or idx
        assert idx == indices == [0, 7, 14, 21, 28, 35]  # same images for every pipeline
        radius = np.array([float(l[3]) for l in lines])
        correct = np.array([int(l[4]) for l in lines])
        for r, cell in zip((0, 0.1, 0.2), row[3:6]):
            assert float(cell) == pytest.approx(round(100 * np.mean((correct == 1) & (radius >= r)), 1))
        assert float(row[header.index("ACR")]) == pytest.approx(round(float(np.mean(radius * correct)), 3))
    assert body[2][0].startswith("envelope")
    readme = (out / "README.md").read_text()
    assert "digits:test" in readme and "n = 100" in readme and "alone-wide" in readme
    assert (out / "curves.png").stat().st_size > 1000

    before = (out / "alone.tsv").read_text()
    assert main(["compare", "--config", str(config), "--out", str(out), "--quiet"]) == 0  # resume: nothing to do
    assert (out / "alone.tsv").read_text() == before

    # the report draws samples; analyze does when asked, and builds no model otherwise
    assert (out / "samples.png").stat().st_size > 1000 and "![samples](samples.png)" in (out / "README.md").read_text()
    assert (out / "table.tex").read_text().count(r" \\") == 3  # the header and one row per pipeline
    rep = tmp_path / "rep"
    assert main(["analyze", str(out / "alone.tsv"), str(out / "alone-wide.tsv"), "--out", str(rep), "--samples"]) == 0
    assert (rep / "samples.png").stat().st_size > 1000
    assert main(["analyze", str(out / "alone.tsv"), "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "samples.png").exists()  # analyze builds no model unless asked


def test_compare_overrides_and_bad_config(config, tmp_path, capsys):
    out = tmp_path / "quick"
    assert main(["compare", "--config", str(config), "--out", str(out), "--quiet", "--limit", "2", "--n", "50"]) == 0
    lines = (out / "alone.tsv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].split("\t")[8] == "50"
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: digits\npipelines:\n  - {name: a, classifier: small-cnn, sigma: 0.5, colour: red}\n")
    assert main(["compare", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "pipeline a: unknown key 'colour'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_compare_in_sequential_mode(config, tmp_path):
    """mode: sequential decides the config's positive radii; the table reads the certified columns."""
    cfg = yaml.safe_load(config.read_text()) | {"mode": "sequential", "n": 400, "mixture": "one-sided", "step": 50}
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "seq"
    assert main(["compare", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    body = list(csv.reader(open(out / "table.csv")))[1:]
    for name, row in zip(("alone", "alone-wide"), body):
        settings = json.loads((out / f"{name}.json").read_text())["settings"]
        assert settings["mode"] == "sequential" and settings["options"]["radii"] == [0.1, 0.2]
        assert settings["options"]["mixture"] == "one-sided" and settings["options"]["step"] == 50
        lines = [l.split("\t") for l in (out / f"{name}.tsv").read_text().splitlines()[1:]]
        assert all(int(l[8]) % 50 == 0 and len(l[10].split(",")) == 2 for l in lines)
        radius = np.array([float(l[3]) for l in lines])
        correct = np.array([int(l[4]) for l in lines])
        assert float(row[5]) == pytest.approx(round(100 * np.mean((correct == 1) & (radius >= 0.2)), 1))


COMPARE_CONFIGS = [p for p in sorted(CONFIGS.glob("*.yaml")) if "pipelines" in yaml.safe_load(p.read_text())]


def test_the_paper_and_example_compare_configs_are_shipped():
    names = {p.stem for p in COMPARE_CONFIGS}
    assert {"demo_mnist", "imagenet_efficientnet_ffdnet", "paper_cifar10_diffusion", "paper_cifar10_dncnn",
            "paper_imagenet_diffusion", "paper_imagenet_dncnn"} <= names


@pytest.mark.parametrize("path", COMPARE_CONFIGS, ids=lambda p: p.name)
def test_shipped_compare_configs_parse_and_name_registered_plugins(path):
    config = load_compare_config(path)
    denoisers, classifiers = set(list_denoisers()), set(list_classifiers())
    for _, s, _ in compare_runs(config):  # every run's settings valid on the schema
        assert s.denoiser.split(":")[0] in denoisers, s.denoiser
        assert s.classifier.split(":")[0] in classifiers, s.classifier


def test_compare_refuses_a_planted_link_before_certifying(config, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "README.md").symlink_to(victim)
    assert main(["compare", "--config", str(config), "--out", str(out), "--quiet"]) == 2
    assert "README.md is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "precious\n" and [p.name for p in out.iterdir()] == ["README.md"]


@pytest.mark.parametrize("extra,message", [("n: 20.9\n", "n must be an int >= 1, got 20.9"),
                                           ("radii: abc\n", "radii must be a list of numbers"),
                                           ("n: [1\n", "is not valid YAML")])
def test_compare_config_errors(tmp_path, capsys, extra, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\npipelines:\n  - {name: a, classifier: small-cnn, sigma: 0.5}\n" + extra)
    assert main(["compare", "--config", str(cfg), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rep").exists()



def test_compare_attack_section_is_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: digits\npipelines:\n  - {name: a, classifier: small-cnn, sigma: 0.5}\n"
                    "attack: {eps: [0.5], pipelines: [b]}\n")
    with pytest.raises(ValueError, match="unknown: \\['b'\\]"):
        load_compare_config(path)
    path.write_text("dataset: digits\npipelines:\n  - {name: a, classifier: small-cnn, sigma: 0.5}\nattack: {steps: 3}\n")
    with pytest.raises(ValueError, match="attack must be a mapping with eps"):
        load_compare_config(path)

