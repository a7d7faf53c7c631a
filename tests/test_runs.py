"""Runs over datasets: the TSV format, resume after a kill, refusal on other settings, bad input."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from certify.cli import main
from certify.settings import RunSettings
from certify.runs import run_certification
from certify.smoothing import Smoothed
from classifiers.small_cnn import SmallCNN
from processes import kill_part_way

DSMOOTH = [sys.executable, "-m", "certify.cli"]


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("cnn")
    SmallCNN(in_channels=1, num_classes=10, width=8).save_pretrained(d)
    return d


def _args(cnn_dir, out, **over):
    base = dict(classifier=f"small-cnn:{cnn_dir}", dataset="digits:test", sigma="0.5", n0="10", n="300",
                alpha="0.001", batch="100", skip="3", max="60", seed="7", out=str(out))
    base.update(over)
    args = ["certify"]
    for k, v in base.items():
        args += [f"--{k}", str(v)]
    return args + ["--quiet"]


def _table(path: Path) -> list[list[str]]:
    """Rows without the time column."""
    return [line.split("\t")[:5] + line.split("\t")[6:] for line in path.read_text().splitlines()]


def test_certify_writes_cohen_compatible_tsv_and_manifest(cnn_dir, tmp_path):
    out = tmp_path / "run.tsv"
    assert main(_args(cnn_dir, out)) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split("\t")[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert {"pA_lower", "nA", "n"} <= set(lines[0].split("\t"))
    assert len(lines) == 1 + 20
    for line in lines[1:]:
        idx, label, pred, radius, correct = line.split("\t")[:5]
        assert correct in ("0", "1") and int(correct) == int(int(pred) == int(label))
        assert float(radius) >= 0 and (radius == "0.0" or len(radius) > 6)  # full precision
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["settings"]["sigma"] == 0.5 and manifest["settings"]["seed"] == 7
    assert manifest["end_time"] and "torch" in manifest["versions"]


def test_killed_run_resumes_to_identical_file(cnn_dir, tmp_path):
    full = tmp_path / "full.tsv"
    assert main(_args(cnn_dir, full)) == 0

    part = tmp_path / "part.tsv"
    written = lambda: len(part.read_text().splitlines()) if part.exists() else 0  # noqa: E731
    assert 4 <= kill_part_way(DSMOOTH + _args(cnn_dir, part, n="3000", batch="50"), written) < 21, \
        "the kill should land part-way through"
    with open(part, "a") as fh:
        fh.write("33\t3\t")  # a torn line, as a kill in the middle of a write leaves it
    assert main(_args(cnn_dir, part, n="3000", batch="50")) == 0

    again = tmp_path / "again.tsv"
    assert main(_args(cnn_dir, again, n="3000", batch="50")) == 0
    assert _table(part) == _table(again)
    assert json.loads(part.with_suffix(".json").read_text())["resumed"] == 1


def test_same_seed_same_file_and_resume_refuses_other_settings(cnn_dir, tmp_path, capsys):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    assert main(_args(cnn_dir, a)) == 0 and main(_args(cnn_dir, b)) == 0
    assert _table(a) == _table(b)
    before = a.read_text()
    for key, value in [("sigma", "0.25"), ("seed", "8"), ("batch", "50"), ("n", "301")]:
        assert main(_args(cnn_dir, a, **{key: value})) == 2
        assert f"started with {key}=" in capsys.readouterr().err
    assert a.read_text() == before


@pytest.mark.parametrize("over,message", [
    (dict(sigma="0"), "sigma must be a positive, finite number"),
    (dict(sigma="-0.5"), "sigma must be a positive, finite number"),
    (dict(alpha="1.5"), "alpha must lie in (0, 1)"),
    (dict(alpha="0"), "alpha must lie in (0, 1)"),
    (dict(n0="0"), "n0 must be an int >= 1"),
    (dict(n="0"), "n must be an int >= 1"),
    (dict(classifier="smal-cnn"), "unknown classifier 'smal-cnn'; did you mean 'small-cnn'"),
    (dict(denoiser="nonee"), "unknown denoiser 'nonee'; did you mean 'none'"),
    (dict(dataset="mnist5k:valid"), "split must be 'train' or 'test', got 'valid'"),
    (dict(dataset="nope"), "unknown dataset 'nope'"),
])
def test_bad_input_is_named_and_leaves_no_file(cnn_dir, tmp_path, capsys, over, message):
    out = tmp_path / "bad.tsv"
    assert main(_args(cnn_dir, out, **over)) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_mismatched_checkpoint_is_a_clear_error(cnn_dir, tmp_path, capsys):
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((cnn_dir / "model.safetensors").read_bytes())
    config = json.loads((cnn_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(config | {"width": 16}))
    assert main(_args(bad, tmp_path / "r.tsv")) == 2
    assert "do not match their config" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("image,message", [
    (torch.full((1, 8, 8), 2.0), r"image values must lie in \[0, 1\]"),
    (torch.zeros(8, 8), r"expected one image of shape \(C, H, W\)"),
])
def test_bad_image_leaves_no_partial_file(cnn_dir, tmp_path, image, message):
    clf = SmallCNN.from_pretrained(cnn_dir)
    settings = RunSettings(classifier="x", dataset="x", sigma=0.25, n0=5, n=10, batch=10)
    out = tmp_path / "r.tsv"
    with pytest.raises(ValueError, match=message):
        run_certification(Smoothed(clf, sigma=0.25), [(image, 0)], settings, out, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_predict_mode_and_analyze(cnn_dir, tmp_path, capsys):
    pred = tmp_path / "p.tsv"
    args = _args(cnn_dir, pred)
    args[0] = "predict"
    i = args.index("--n0")
    del args[i:i + 2]
    assert main(args) == 0
    # PREDICT has no radius (issue 13): its file has no radius column and stays out of certified tables
    assert pred.read_text().splitlines()[0].split("\t")[:5] == ["idx", "label", "predict", "correct", "time"]
    cert, cert2 = tmp_path / "c.tsv", tmp_path / "c2.tsv"
    assert main(_args(cnn_dir, cert)) == 0
    assert main(_args(cnn_dir, cert2, sigma="0.25")) == 0
    assert main(["analyze", str(cert), str(cert2), str(pred), "--out", str(tmp_path / "rep"), "--radii", "0,0.25"]) == 0
    for name in ("table.md", "table.csv", "high_probability.md", "curves.png", "predictions.md"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert "envelope" in (tmp_path / "rep" / "table.md").read_text()
    assert "| p |" not in (tmp_path / "rep" / "table.md").read_text() and "| p |" in (tmp_path / "rep" / "predictions.md").read_text()
    table = {row[0]: row for row in csv.reader(open(tmp_path / "rep" / "table.csv"))}
    for line in (tmp_path / "rep" / "high_probability.md").read_text().splitlines()[4:]:
        name, m, alpha, *cells = [c.strip() for c in line.strip("|").split("|")]
        for cell, acc in zip(cells, table[name][3:5]):  # Cohen's bound on the table's accuracy, clipped at 0
            bound = float(acc) / 100 - float(alpha) - math.sqrt(float(alpha) * (1 - float(alpha)) * math.log(1000) / int(m))
            assert float(cell) == round(100 * max(0.0, bound - math.log(1000) / (3 * int(m))), 1)


@pytest.mark.parametrize("mode,extra", [("sequential", ["--radii", "0.1,0.05"]), ("anytime", []),
                                        ("sequential", ["--radii", "0.1,0.05", "--mixture", "one-sided"])])
def test_sequential_modes_write_their_columns_and_analyze(cnn_dir, tmp_path, mode, extra):
    out = tmp_path / f"{mode}.tsv"
    args = _args(cnn_dir, out, n="2000", batch="100") + ["--mode", mode, *extra]
    assert main(args) == 0
    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert header[:10] == ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "nA", "n", "n0"]
    assert len(rows) == 20
    from certify.boundary import check_schedule

    checks = set(check_schedule(2000, 10, 0.02, 100))  # the defaults: first check at 10, then 2% apart, <= batch
    for row in rows:
        assert int(row[8]) in checks  # stops early, at a check
        assert int(row[9]) == 0 if mode == "sequential" else 1 <= int(row[9]) <= 100  # every class tested; <= n0
        if mode == "sequential":
            certified = [int(v) for v in row[10].split(",")]
            assert len(certified) == 2 and float(row[3]) in {0.0, *(r for r, c in zip((0.05, 0.1), certified) if c)}
    assert main(args) == 0  # a finished run resumes to nothing
    assert main(["analyze", str(out), "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "samples/img" in table


def test_sequential_mode_needs_radii(cnn_dir, tmp_path, capsys):
    assert main(_args(cnn_dir, tmp_path / "s.tsv") + ["--mode", "sequential"]) == 2
    assert "sequential mode needs positive radii" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sequential_mixture_is_a_run_setting(cnn_dir, tmp_path, capsys):
    """The mixture is recorded; resuming with the other one is refused, naming it; a bad one is refused."""
    out = tmp_path / "s.tsv"
    base = _args(cnn_dir, out, n="500", batch="100") + ["--mode", "sequential", "--radii", "0.05", "--max", "3"]
    assert main(base + ["--mixture", "one-sided"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["options"]["mixture"] == "one-sided"
    assert main(base + ["--mixture", "two-sided"]) == 2
    assert "mixture" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mixture must be one of two-sided, one-sided, got 'both'"):
        RunSettings(classifier="small-cnn", dataset="digits", sigma=0.25, mode="sequential",
                    options={"radii": [0.1], "mixture": "both"}).validate()
