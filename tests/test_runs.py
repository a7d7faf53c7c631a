"""certify/runs.py, a run over a dataset: the TSV in Cohen's columns and its manifest, the same file for the same
seed, resume after a kill to the identical file, refusal of other settings, bad input named before anything is
written, labels the classifier cannot output, an unwritable output, the automatic batch kept on resume, one
progress bar per run, and each line's source (an old file without it still resumes; a dataset that changed is
certified again where it moved). Several processes: tests/test_distributed.py; the files: test_results.py."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil

import pytest
import torch

import certify.runs as runs
from certify.analysis import analyze
from certify.cli import main
from certify.data import create_dataset
from certify.outcomes import load_result
from certify.runs import run_certification
from certify.settings import RunSettings
from certify.smoothing import Smoothed
from classifiers.small_cnn import SmallCNN
from fixtures import (DSMOOTH, MemoryBound, digits_args, images_at, kill_part_way, table_without_time, toy_pipeline,
                      toy_run, toy_settings)


def test_certify_writes_cohen_compatible_tsv_and_manifest(cnn_dir, tmp_path):
    out = tmp_path / "run.tsv"
    assert main(digits_args(cnn_dir, out)) == 0
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
    part = tmp_path / "part.tsv"
    written = lambda: len(part.read_text().splitlines()) if part.exists() else 0  # noqa: E731
    assert 4 <= kill_part_way(DSMOOTH + digits_args(cnn_dir, part, n="1000", batch="50"), written) < 21, \
        "the kill should land part-way through"
    with open(part, "a") as fh:
        fh.write("33\t3\t")  # a torn line, as a kill in the middle of a write leaves it
    assert main(digits_args(cnn_dir, part, n="1000", batch="50")) == 0

    again = tmp_path / "again.tsv"
    assert main(digits_args(cnn_dir, again, n="1000", batch="50")) == 0
    assert table_without_time(part) == table_without_time(again)
    assert json.loads(part.with_suffix(".json").read_text())["resumed"] == 1


def test_same_seed_same_file_and_resume_refuses_other_settings(cnn_dir, tmp_path, capsys):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    assert main(digits_args(cnn_dir, a)) == 0 and main(digits_args(cnn_dir, b)) == 0
    assert table_without_time(a) == table_without_time(b)
    before = a.read_text()
    for key, value in [("sigma", "0.25"), ("seed", "8"), ("batch", "50"), ("n", "301")]:
        assert main(digits_args(cnn_dir, a, **{key: value})) == 2
        assert f"started with {key}=" in capsys.readouterr().err
    assert main(digits_args(cnn_dir, a, sigma="0.25", n="301")) == 2  # every setting that differs is named
    assert "started with n=300, sigma=0.5, this run has n=301, sigma=0.25;" in capsys.readouterr().err
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
    assert main(digits_args(cnn_dir, out, **over)) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


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



@pytest.mark.parametrize("code,message", [(errno.ENOSPC, "the disk is full .* run the same command again"),
                                          (errno.EACCES, "cannot write .*choose another --out"),
                                          (errno.EROFS, "cannot write .*choose another --out")])
def test_unwritable_output_is_one_clear_error(tmp_path, monkeypatch, code, message):
    def fail(path):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(runs, "open_append", fail)
    g, data, s = toy_run(2)
    with pytest.raises(ValueError, match=message):
        run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    assert not (tmp_path / "r.tsv").exists() and not (tmp_path / "r.json").exists()


def test_labels_beyond_num_classes_are_refused_before_writing(tmp_path):
    g, data, s = toy_run(3, label=7)
    with pytest.raises(ValueError, match="label 7, but the classifier has 2 classes"):
        run_certification(g, type("D", (list,), {"targets": [7, 7, 7]})(data), s, tmp_path / "r.tsv", quiet=True)
    assert list(tmp_path.iterdir()) == []



def test_auto_batch_is_probed_once_and_reused_on_resume(tmp_path, monkeypatch):
    data = [(torch.rand(1, 4, 4), 0) for _ in range(4)]
    g = Smoothed(MemoryBound(capacity=300), sigma=0.25)
    settings = RunSettings(classifier="toy", dataset="toy", sigma=0.25, n0=10, n=1000, batch="auto")
    out = tmp_path / "r.tsv"
    run_certification(g, data[:2], settings, out, quiet=True)  # as if killed after two images
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["settings"]["batch"] == 256 and manifest["settings"]["options"]["batch"] == "auto"

    # Resumed on a machine where more would fit: the run keeps the batch it started with.
    g.classifier.capacity = 10_000
    run_certification(g, data, settings, out, quiet=True)
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["batch"] == 256
    assert len(out.read_text().splitlines()) == 5
    fixed = RunSettings(**{**settings.__dict__, "batch": 256})
    with pytest.raises(ValueError, match="options"):
        run_certification(g, data, fixed, out, quiet=True)



# -- one progress bar per run; each image's source -----------------------------------------------------
def _toy():
    return toy_pipeline(num_classes=10, pixels=None)  # ten classes, any image size


def test_only_the_main_process_draws_a_progress_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runs, "_from_rank0", lambda value, world_size: value)  # no process group here
    g = toy_pipeline(seed=None)
    data = [(torch.full((1, 2, 2), 0.5), 0)] * 4
    settings = toy_settings()
    run_certification(g, data, settings, tmp_path / "r.tsv", rank=1, world_size=2)
    assert capsys.readouterr().err == ""  # was a bar at position 1, cleared: blank lines under accelerate launch
    assert (tmp_path / "r.tsv.part-001").read_text().count("\n") == 3  # its two images and the header
    run_certification(g, data, settings, tmp_path / "one.tsv")
    assert re.search(r"certify sigma=0\.25: 100%", capsys.readouterr().err)  # one process: its bar as before



def test_each_result_line_records_its_source_after_cohens_columns(tmp_path):
    weird = "7/tab\there\nand a newline \\ é.png"
    root = images_at(tmp_path / "d", ["5/a.png", weird, "7/c.png"])
    s = RunSettings(classifier="toy", dataset=f"imagefolder:{root}", sigma=0.25, n0=5, n=20, batch=20)
    out = run_certification(_toy(), create_dataset(s.dataset), s, tmp_path / "r.tsv", quiet=True)
    header, *lines = out.read_text().split("\n")[:-1]
    assert header.split("\t")[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert header.split("\t")[-1] == "source" and len(lines) == 3  # the odd name stays on one line
    sources = [line.split("\t")[-1] for line in lines]
    assert sources == ["5/a.png", "7/c.png", "7/tab\\there\\nand a newline \\\\ é.png"]
    assert load_result(out).m == 3
    analyze([out], tmp_path / "rep")  # the per-image report names each image's file
    per_image = (tmp_path / "rep" / "per_image.csv").read_text()
    assert per_image.splitlines()[0] == "idx,label,source,r predict,r radius" and "5/a.png" in per_image


def test_a_file_from_before_the_source_column_still_resumes(tmp_path):
    data = [(torch.full((1, 2, 2), 0.1 * i), 0) for i in range(4)]
    s = RunSettings(classifier="toy", dataset="toy", sigma=0.25, n0=5, n=20, batch=20)
    out = run_certification(_toy(), data, s, tmp_path / "r.tsv", quiet=True)
    old = "".join("\t".join(line.split("\t")[:-1]) + "\n" for line in out.read_text().splitlines()[:3])
    out.write_text(old)  # as the previous release wrote it, killed after two images
    run_certification(_toy(), data, s, out, quiet=True)
    lines = out.read_text().splitlines()
    assert lines[0].split("\t")[-1] == "n0" and len(lines) == 5 and lines[1:3] == old.splitlines()[1:]


def test_a_resume_on_a_dataset_that_changed_certifies_the_moved_images_again(tmp_path, caplog):
    root = images_at(tmp_path / "d", ["5/a.png", "5/c.png", "7/e.png"])
    s = RunSettings(classifier="toy", dataset=f"imagefolder:{root}", sigma=0.25, n0=5, n=20, batch=20)
    out = run_certification(_toy(), create_dataset(s.dataset), s, tmp_path / "r.tsv", quiet=True)
    images_at(root, ["5/b.png"])  # a new image: indices 1 and 2 now name other files
    run_certification(_toy(), create_dataset(s.dataset), s, out, quiet=True)
    assert "image 1 was '5/c.png' when certified" in caplog.text
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert sorted((int(r[0]), r[-1]) for r in rows) == [(0, "5/a.png"), (1, "5/b.png"), (2, "5/c.png"), (3, "7/e.png")]


@pytest.mark.parametrize("name", ["run[1].tsv", "run*.tsv", "run?.tsv"])
def test_a_name_with_glob_characters_takes_only_its_own_shards(tmp_path, name):
    """`run[1].tsv`'s shards are `run[1].tsv.part-N`, never `run1.tsv.part-N`: a glob on the name once merged
    another run's shard into this file (its lines winning) and deleted it."""
    g, data, s = toy_run()
    out = run_certification(g, data, s, tmp_path / name, quiet=True)
    before = out.read_text()
    foreign = tmp_path / "run1.tsv.part-000"  # another network's shard, whose lines would win
    foreign.write_text(run_certification(toy_pipeline(seed=3), data, s, tmp_path / "o.tsv", quiet=True).read_text())
    assert table_without_time(foreign) != table_without_time(out)
    run_certification(g, data, s, out, quiet=True)
    assert out.read_text() == before and foreign.exists()


def test_a_resume_refuses_weights_replaced_under_the_same_name(cnn_dir, tmp_path, capsys):
    """The same --classifier small-cnn:DIR, its model.safetensors replaced between the kill and the resume: the
    resumed lines would come from another network under one manifest. A file whose manifest predates the
    recorded weights still resumes."""
    from safetensors.torch import load_file, save_file

    folder, out = tmp_path / "cnn", tmp_path / "r.tsv"
    shutil.copytree(cnn_dir, folder)
    assert main(digits_args(folder, out)) == 0
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:4]))  # as a kill after three images leaves it
    before, manifest = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert set(manifest["weights"]) == {"classifier", "denoiser"}
    weights = load_file(folder / "model.safetensors")
    save_file({k: v * 1.01 for k, v in weights.items()}, folder / "model.safetensors")
    assert main(digits_args(folder, out)) == 2
    assert "was started with other classifier weights than this run's" in capsys.readouterr().err
    assert out.read_text() == before
    manifest.pop("weights")  # as an older release wrote it
    out.with_suffix(".json").write_text(json.dumps(manifest))
    assert main(digits_args(folder, out)) == 0 and len(out.read_text().splitlines()) == 21
