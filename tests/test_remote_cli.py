"""`dsmooth certify` against a remote API: labels from the API, cache beside the results, budget."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from certify.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from remote_server import FaultyVisionServer  # noqa: E402


@pytest.fixture
def server():
    with FaultyVisionServer(keys={"http": "tok-SECRET-1234"}, faults={"500": 0.05, "429": 0.05}) as srv:
        yield srv


@pytest.fixture
def folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for i, (name, colour) in enumerate([("red", (200, 80, 50)), ("blue", (60, 70, 210)), ("dark", (9, 10, 8))]):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        arr = np.clip(np.array(colour) + rng.integers(-10, 10, (12, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / "imgs" / name / f"{i}.png")
    return tmp_path / "imgs"


def _args(server, folder, out, *extra):
    return ["certify", "--classifier", "remote:http", "--classifier-arg", f"endpoint={server.url}/classify",
            "--classifier-arg", "timeout=2", "--classifier-arg", "backoff=0.01", "--dataset", f"imagefolder:{folder}",
            "--sigma", "0.12", "--n0", "20", "--n", "100", "--batch", "60", "--alpha", "0.001", "--label-from-api",
            "--out", str(out), "--quiet", *extra]


def test_remote_run_labels_from_api_cache_and_budget(server, folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DSMOOTH_HTTP_TOKEN", "tok-SECRET-1234")
    out = tmp_path / "api.tsv"
    # 3 clean labels + 3 x 120 samples (minus duplicates served from cache) exceed a budget of 200.
    assert main(_args(server, folder, out, "--query-budget", "200")) == 3
    assert "query budget of 200 would be exceeded" in capsys.readouterr().err
    done = out.read_text().splitlines()
    assert all(len(line.split("\t")) == 11 for line in done)  # no partial line
    sent_before = server.total

    assert main(_args(server, folder, out, "--query-budget", "1000")) == 0  # resumes from the cache
    rows = [l.split("\t") for l in out.read_text().splitlines()[1:]]
    assert len(rows) == 3
    labels = [int(r[1]) for r in rows]
    vocab = (out.with_suffix(".api-cache") / "labels.json").read_text()
    assert "red" in vocab and "blue" in vocab
    assert rows[0][2] == rows[0][1] and int(rows[0][4]) == 1  # a red image certifies as the API's own label
    assert len(set(labels)) == 3  # red, blue and the empty answer "none" are three classes
    again = server.total
    assert main(_args(server, folder, tmp_path / "again.tsv", "--api-cache", str(out.with_suffix(".api-cache")))) == 0
    assert server.total == again  # a repeated run is answered from the cache alone
    assert again > sent_before
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"tok-SECRET-1234" not in path.read_bytes(), path
