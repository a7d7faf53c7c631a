"""Issue 13: image folders labelled by name, corrupt images, remote APIs that fail, lie or stall."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from certify.cli import main
from certify.data import create_dataset, map_folder_labels
from classifiers.remote.adapters import Adapter, RemoteError, Retryable, parse_retry_after
from classifiers.remote.client import RemoteClassifier
from classifiers.small_cnn import SmallCNN

sys.path.insert(0, str(Path(__file__).parent))
from remote_server import FaultyVisionServer  # noqa: E402


def write_folder(root: Path, names, per_class: int = 2, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (root / str(name)).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / str(name) / f"{j}.png")
    return root


# -- 1: imagefolder labels ----------------------------------------------------------------------------------
def test_integer_folder_names_are_class_ids_not_positions(tmp_path):
    ds = create_dataset(f"imagefolder:{write_folder(tmp_path / 'd', [0, 1, 2, 4, 7])}")
    assert sorted(set(ds.targets)) == [0, 1, 2, 4, 7]  # before: 0..4, so digit 4 was scored as class 3


def test_named_folders_map_to_the_classifiers_class_names_or_are_refused(tmp_path):
    ds = create_dataset(f"imagefolder:{write_folder(tmp_path / 'd', ['cat', 'dog'])}")
    map_folder_labels(ds, ["dog", "bird", "cat"])
    assert sorted(set(ds.targets)) == [0, 2]
    ds = create_dataset(f"imagefolder:{tmp_path / 'd'}")
    with pytest.raises(ValueError, match=r"folder\(s\) \['cat', 'dog'\] are neither class ids .*label_map"):
        map_folder_labels(ds, [str(i) for i in range(10)])
    (tmp_path / "map.json").write_text(json.dumps({"cat": 3, "dog": 5}))
    ds = create_dataset(f"imagefolder:{tmp_path / 'd'}", label_map=str(tmp_path / "map.json"))
    assert sorted(set(ds.targets)) == [3, 5]


def test_synset_folders_map_to_imagenet_class_ids(tmp_path):
    ds = create_dataset(f"imagefolder:{write_folder(tmp_path / 'd', ['n01443537', 'n01440764'])}")
    map_folder_labels(ds, [f"class {i}" for i in range(1000)])
    assert sorted(set(ds.targets)) == [0, 1]  # tench is class 0, goldfish class 1


def test_a_flat_folder_says_what_layout_is_expected(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class folders; expected PATH/<class>/<image files>"):
        create_dataset(f"imagefolder:{tmp_path / 'flat'}")


def test_a_corrupt_png_names_the_file(tmp_path):
    root = write_folder(tmp_path / "d", [0, 1])
    (root / "1" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = create_dataset(f"imagefolder:{root}")
    bad = [i for i in range(len(ds)) if "1.png" in str(getattr(ds, "name", ""))] or [len(ds) - 1]
    with pytest.raises(ValueError, match=r"1/1.png.*remove or replace that file"):
        for i in range(len(ds)):
            ds[i]
    assert bad


def test_certification_of_named_folders_through_the_cli(tmp_path, capsys):
    torch.manual_seed(0)
    SmallCNN(in_channels=1, num_classes=10, width=4, image_size=8).save_pretrained(tmp_path / "cnn")
    root = write_folder(tmp_path / "d", ["cat", "dog"])
    args = ["certify", "--classifier", f"small-cnn:{tmp_path / 'cnn'}", "--dataset", f"imagefolder:{root}",
            "--sigma", "0.5", "--n0", "5", "--n", "20", "--batch", "20", "--out", str(tmp_path / "r.tsv"), "--quiet"]
    assert main(args) == 2
    assert "are neither class ids" in capsys.readouterr().err and not (tmp_path / "r.tsv").exists()


# -- 8, 12: remote APIs ---------------------------------------------------------------------------------------
class Scripted(Adapter):
    """An adapter that answers from a script: each item an answer or an exception to raise."""

    vendor = "scripted"

    def __init__(self, *script) -> None:
        self.script, self.calls = list(script), 0

    def api_id(self) -> str:
        return "scripted|https://api.example/v1?key=SECRET"

    def query(self, png, timeout):
        item = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(item, Exception):
            raise item
        return item


IMAGE = torch.rand(1, 3, 4, 4)


@pytest.mark.parametrize("answer", [[{"nam": "cat"}], [("cat",)], [("cat", "high")], None, [("cat", None)]])
def test_malformed_answers_are_retried_then_one_clear_error(answer):
    clf = RemoteClassifier(Scripted(answer), max_retries=2, backoff=0.0)
    with pytest.raises(RemoteError, match=r"gave up after 3 attempts \(scripted: malformed answer .*resume"):
        clf(IMAGE)


def test_retry_after_infinite_or_an_hour_stops_with_a_resumable_message():
    assert parse_retry_after("inf") == math.inf
    for wait in (math.inf, 3600.0):
        clf = RemoteClassifier(Scripted(Retryable("HTTP 429", wait), [("cat", 1.0)]), backoff=0.0, max_retry_wait=60)
        with pytest.raises(RemoteError, match=r"asks to wait .* more than max_retry_wait=60 s; stopped.*resumed"):
            clf(IMAGE)
    clf = RemoteClassifier(Scripted(Retryable("HTTP 429", 0.01), [("cat", 1.0)]), backoff=0.0)
    assert clf(IMAGE).tolist() == [1]  # a short wait is simply honoured


def test_the_api_cache_holds_no_credentials(tmp_path):
    clf = RemoteClassifier(Scripted([("cat", 1.0)]), cache_dir=tmp_path / "cache")
    clf(IMAGE)
    import sqlite3

    rows = sqlite3.connect(str(tmp_path / "cache" / "answers.sqlite")).execute("SELECT api FROM answers").fetchall()
    assert rows and all("SECRET" not in r[0] for r in rows)
    assert "SECRET" not in json.dumps(clf.describe())


@pytest.fixture
def folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in [("red", (200, 80, 50)), ("blue", (60, 70, 210))]:
        (tmp_path / "imgs" / name).mkdir(parents=True)
        arr = np.clip(np.array(colour) + rng.integers(-10, 10, (12, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / "imgs" / name / "0.png")
    return tmp_path / "imgs"


def _remote_args(url, folder, out, *extra):
    return ["certify", "--classifier", "remote:http", "--classifier-arg", f"endpoint={url}/classify",
            "--classifier-arg", "timeout=2", "--classifier-arg", "backoff=0.01", "--classifier-arg", "max_retries=2",
            "--dataset", f"imagefolder:{folder}", "--sigma", "0.12", "--n0", "5", "--n", "10", "--batch", "10",
            "--out", str(out), "--quiet", *extra]


def test_remote_without_label_from_api_is_refused(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DSMOOTH_HTTP_TOKEN", "tok")
    with FaultyVisionServer(keys={"http": "tok"}) as server:
        assert main(_remote_args(server.url, folder, tmp_path / "r.tsv")) == 2
    assert "--label-from-api" in capsys.readouterr().err and not (tmp_path / "r.tsv").exists()


def test_an_api_that_keeps_answering_500_gives_up_with_a_resumable_message():
    clf = RemoteClassifier(Scripted(Retryable("http: HTTP 500")), max_retries=3, backoff=0.0)
    with pytest.raises(RemoteError, match=r"gave up after 4 attempts \(http: HTTP 500\).*run the same command again"):
        clf(IMAGE)


def test_bad_credentials_are_one_line_on_the_command_line(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DSMOOTH_HTTP_TOKEN", "wrong")
    with FaultyVisionServer(keys={"http": "tok"}) as server:
        code = main(_remote_args(server.url, folder, tmp_path / "r.tsv", "--label-from-api"))
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err
    assert "HTTP 403 (not authorized): check the API credentials" in err.strip().splitlines()[-1]
