"""Suite-wide set-up: every temporary file the suite makes lands under pytest's own temporary folder; the
session's shared fixtures (a saved small-cnn, MNIST test digits). Stubs and helpers: fixtures.py."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from fixtures import small_cnn_dir

# One thread for torch in this process, as in every process the suite launches (`fixtures.launch_env`). The suite's
# networks are tiny: a second intra-op thread gains nothing on them, and on a 2-core machine with another job it
# waits for a core at every operation (the attack test ran 10 times slower with two threads there).
torch.set_num_threads(1)

# The benchmark scripts import their shared helpers as `benchlib`, their folder being on the path when they run;
# the tests load them the same way.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_pytest(tmp_path_factory):
    """Docstring examples (tempfile.mkdtemp) and launched processes (TMPDIR: torchelastic's folders) write
    their scratch files under pytest's base folder, which pytest prunes to the last three runs, not /tmp."""
    folder = str(tmp_path_factory.mktemp("tempfile"))
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = folder, folder
    yield
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[1]


@pytest.fixture(scope="session")
def cnn_dir(tmp_path_factory) -> Path:
    """A seeded small-cnn of width 8 (1 x 28 x 28 in, 10 classes), saved once for the session."""
    return small_cnn_dir(tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="session")
def mnist_test():
    """Every fourth digit of mnist5k:test (250 images) and their labels."""
    from certify.data import create_dataset

    ds = create_dataset("mnist5k:test")
    xs, ys = zip(*(ds[i] for i in range(0, 1000, 4)))
    return torch.stack(xs), torch.tensor(ys)
