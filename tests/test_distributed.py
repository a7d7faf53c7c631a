"""certify/runs.py over several processes (Accelerate over torchrun, gloo on CPU): two processes give the file one
process gives, and a run killed part-way resumes with another process count, either way, to that file, leaving no
shard behind. Two launches of two processes in all: each kill-and-resume also shows the equality."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from certify.cli import main
from certify.results import shard_paths
from fixtures import ACCELERATE, kill_part_way, launch_env, table_without_time

pytestmark = pytest.mark.slow


def _args(cnn_dir, out) -> list[str]:
    return ["certify", "--classifier", f"small-cnn:{cnn_dir}", "--dataset", "mnist5k:test", "--sigma", "0.25",
            "--n0", "20", "--n", "1000", "--batch", "100", "--skip", "50", "--max", "1000", "--seed", "3",
            "--device", "cpu", "--out", str(out), "--quiet"]


def _launch(cnn_dir, out, processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "certify.cli", *_args(cnn_dir, out)]
    return [*ACCELERATE, "-m", "certify.cli", *_args(cnn_dir, out)]


def _env():
    return launch_env(ACCELERATE_USE_CPU="1")  # both ranks on the CPU (gloo) like the --device cpu reference, GPU or not


@pytest.fixture(scope="module")
def reference(cnn_dir, tmp_path_factory) -> Path:
    """One process, this one (one thread, as each launched process: tests/conftest.py): the file every process
    count must give."""
    out = tmp_path_factory.mktemp("ref") / "one.tsv"
    assert main(_args(cnn_dir, out)) == 0
    assert len(table_without_time(out)) == 21
    return out


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_killed_run_resumes_with_another_process_count(cnn_dir, reference, tmp_path, first, then):
    out = tmp_path / "run.tsv"
    lines = lambda: sum(max(len(p.read_text().splitlines()) - 1, 0) for p in [out, *shard_paths(out)] if p.exists())  # noqa: E731
    assert 4 <= kill_part_way(_launch(cnn_dir, out, first), lines, at_least=4, env=_env()) < 20, \
        "the kill should land part-way through"
    if then == 1:
        assert main(_args(cnn_dir, out)) == 0  # in this process: it merges the two processes' shards
    else:
        subprocess.run(_launch(cnn_dir, out, 2), check=True, env=_env(), capture_output=True)
        # two processes wrote most of the file: they give what one gives
        assert json.loads(out.with_suffix(".json").read_text())["world_size"] == 2
    assert table_without_time(out) == table_without_time(reference)
    assert shard_paths(out) == []
