"""Suite-wide set-up: every temporary file the suite makes lands under pytest's own temporary folder."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

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
