"""certify/launch.py: what `accelerate launch` was asked for, read from its command line, so that a launch that
silently runs one process (`--cpu --num_processes 2`) says so, and how to get two."""

from __future__ import annotations

import subprocess
import sys

import pytest

from certify.launch import requested_processes
from fixtures import launch_env


def test_requested_processes_reads_launch_command_lines():
    assert requested_processes(["python", "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                                "x.py"]) == 2
    assert requested_processes(["accelerate", "launch", "--num_processes=3", "x.py"]) == 3
    assert requested_processes(["python", "x.py"]) is None


@pytest.mark.slow
def test_accelerate_cpu_launch_of_two_processes_says_how_to_get_two(tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "certify.cli", "certify",
           "--classifier", "small-cnn", "--classifier-arg", "image_size=8", "--classifier-arg", "in_channels=1",
           "--dataset", "digits:test", "--sigma", "0.5", "--n0", "5", "--n", "20", "--batch", "20", "--max", "2",
           "--out", str(tmp_path / "r.tsv"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=launch_env(), cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "asked for 2 processes but started only this one" in proc.stderr
    assert "--multi_gpu --num_processes 2" in proc.stderr
