"""Several processes (Accelerate over torchrun, gloo on CPU) give the file one process gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from certify.results import shard_paths
from classifiers.small_cnn import SmallCNN
from processes import ACCELERATE, kill_part_way, launch_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("cnn")
    SmallCNN(width=8).save_pretrained(d)
    return d


def _cmd(cnn_dir, out, processes: int, n: int = 3000):
    args = ["certify", "--classifier", f"small-cnn:{cnn_dir}", "--dataset", "mnist5k:test", "--sigma", "0.25",
            "--n0", "20", "--n", str(n), "--batch", "100", "--skip", "50", "--max", "1000", "--seed", "3",
            "--device", "cpu", "--out", str(out), "--quiet"]
    if processes == 1:
        return [sys.executable, "-m", "certify.cli", *args]
    return [*ACCELERATE, "-m", "certify.cli", *args]


def _table(path: Path) -> list[list[str]]:
    return [line.split("\t")[:5] + line.split("\t")[6:] for line in path.read_text().splitlines()]


def _env():
    return launch_env(ACCELERATE_USE_CPU="1")  # both ranks on the CPU (gloo) like the --device cpu reference, GPU or not


@pytest.fixture(scope="module")
def reference(cnn_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "one.tsv"
    subprocess.run(_cmd(cnn_dir, out, 1), check=True, env=_env(), capture_output=True)
    assert len(_table(out)) == 21
    return out


def test_two_processes_equal_one(cnn_dir, reference, tmp_path):
    two = tmp_path / "two.tsv"
    subprocess.run(_cmd(cnn_dir, two, 2), check=True, env=_env(), capture_output=True)
    assert _table(reference) == _table(two)
    assert json.loads(two.with_suffix(".json").read_text())["world_size"] == 2
    assert shard_paths(two) == []


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_killed_run_resumes_with_another_process_count(cnn_dir, reference, tmp_path, first, then):
    out = tmp_path / "run.tsv"
    lines = lambda: sum(max(len(p.read_text().splitlines()) - 1, 0) for p in [out, *shard_paths(out)] if p.exists())  # noqa: E731
    assert 4 <= kill_part_way(_cmd(cnn_dir, out, first), lines, at_least=4, env=_env()) < 20, \
        "the kill should land part-way through"
    subprocess.run(_cmd(cnn_dir, out, then), check=True, env=_env(), capture_output=True)
    assert _table(out) == _table(reference)
    assert shard_paths(out) == []
