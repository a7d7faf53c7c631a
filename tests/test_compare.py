"""`dsmooth compare`: every pipeline on the same images, a table that agrees with its TSVs, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from certify.cli import main
from certify.compare import compare_runs, load_compare_config
from classifiers import list_classifiers
from classifiers.small_cnn import SmallCNN
from denoisers import list_denoisers

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


@pytest.fixture
def config(tmp_path) -> Path:
    torch.manual_seed(0)
    SmallCNN(width=8).save_pretrained(tmp_path / "cnn")
    cfg = {
        "name": "tiny", "dataset": "digits:test", "n0": 10, "n": 100, "alpha": 0.01, "batch": 110, "skip": 7,
        "images": 6, "seed": 1, "radii": [0, 0.1, 0.2],
        "pipelines": [
            {"name": "alone", "classifier": f"small-cnn:{tmp_path / 'cnn'}", "sigma": 0.12},
            {"name": "alone-wide", "classifier": f"small-cnn:{tmp_path / 'cnn'}", "denoiser": "none", "sigma": 0.5},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_compare_table_matches_its_tsvs(config, tmp_path, capsys):
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


# -- issue 25, 14: curves at exact values, the legend beside them; samples of what each denoiser does ---------
def _run(name, radius, correct, sigma=0.25):
    from certify.analysis import RunResult

    n = len(radius)
    return RunResult(name, np.array(radius, float), np.array(correct), np.zeros(n, int), np.zeros(n), np.zeros(n),
                     {"settings": {"sigma": sigma}})


def test_curves_are_drawn_at_exact_values_with_the_legend_outside():
    from certify.plots import curves_figure

    ninety = _run("ninety", [0.2] * 9 + [0.0], [1] * 9 + [0])  # 90% up to r = 0.2, then 0%
    twin = _run("twin", [0.2] * 9 + [0.0], [1] * 9 + [0])      # the very same curve
    other = _run("other", [0.5, 0.1], [1, 1], sigma=0.5)
    fig = curves_figure([ninety, twin, other], max_radius=1.0)
    ax = fig.axes[0]
    lines = ax.get_lines()
    for line, run in zip(lines, (ninety, twin, other)):
        x, y = line.get_xdata(), line.get_ydata()
        assert list(y) == [100 * run.certified_accuracy(r) for r in x]  # exact, no nudge
        assert line.get_drawstyle() == "steps-pre" and set(run.radius[run.correct == 1]) <= set(x)  # steps there
    assert max(lines[0].get_ydata()) == 90.0 and min(lines[0].get_ydata()) == 0.0
    assert list(lines[0].get_ydata()) == list(lines[1].get_ydata())
    assert lines[0].get_marker() != lines[1].get_marker() and lines[0].get_markevery() != lines[1].get_markevery()
    assert lines[0].get_linewidth() > lines[1].get_linewidth()  # the one below shows around the one on top
    assert ax.get_ylim()[0] == 0 and 100 <= ax.get_ylim()[1] <= 105
    fig.canvas.draw()
    legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= box.x1  # beside the axes, covering no curve


def test_samples_show_the_noisy_and_denoised_images_exactly(tmp_path, caplog):
    from certify.data import create_dataset
    from certify.samples import draw_samples, sample_row, write_samples
    from certify.settings import RunSettings
    from denoisers import create_denoiser

    def settings(denoiser):
        return RunSettings(classifier="small-cnn", dataset="digits:test", sigma=0.25, denoiser=denoiser)

    alone, mse = draw_samples([sample_row("alone", settings("none"), [0, 7]),
                               sample_row("mse", settings("dncnn.mnist5k_s025_mse"), [0, 7])]).subfigs
    assert "alone: sigma = 0.25" in alone.get_suptitle() and "mse: sigma = 0.25, PSNR denoised" in mse.get_suptitle()
    clean = create_dataset("digits:test")[7][0]
    noisy = clean + 0.25 * torch.randn((2, *clean.shape), generator=torch.Generator().manual_seed(0))[1]
    with torch.no_grad():
        denoised = create_denoiser("dncnn.mnist5k_s025_mse").eval()(noisy[None], 0.25)[0]
    panels = [ax.images[0].get_array() for ax in mse.axes if ax.images]
    assert len(panels) == 6 and len([ax for ax in alone.axes if ax.images]) == 4  # no denoiser: clean and noisy only
    assert np.allclose(panels[3], clean[0]) and np.allclose(panels[4], noisy[0].clamp(0, 1))
    assert np.allclose(panels[5], denoised[0].clamp(0, 1), atol=1e-5)
    broken = [("alone", settings("none"), [0], None), ("missing", settings("dncnn:/nonexistent/model"), [0], None)]
    with caplog.at_level("WARNING"):
        assert write_samples(tmp_path / "samples.png", broken) == tmp_path / "samples.png"
    assert "missing left out" in caplog.text  # a model that cannot load costs its row, never the report
    assert write_samples(tmp_path / "none.png", broken[1:]) is None and not (tmp_path / "none.png").exists()


def test_compare_and_analyze_draw_samples(config, tmp_path):
    out = tmp_path / "report"
    assert main(["compare", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    assert (out / "samples.png").stat().st_size > 1000 and "![samples](samples.png)" in (out / "README.md").read_text()
    assert (out / "table.tex").read_text().count(r" \\") == 3  # the header and one row per pipeline
    rep = tmp_path / "rep"
    assert main(["analyze", str(out / "alone.tsv"), str(out / "alone-wide.tsv"), "--out", str(rep), "--samples"]) == 0
    assert (rep / "samples.png").stat().st_size > 1000
    assert main(["analyze", str(out / "alone.tsv"), "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "samples.png").exists()  # analyze builds no model unless asked


def test_compare_refuses_a_planted_link_before_certifying(config, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "README.md").symlink_to(victim)
    assert main(["compare", "--config", str(config), "--out", str(out), "--quiet"]) == 2
    assert "README.md is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "precious\n" and [p.name for p in out.iterdir()] == ["README.md"]
