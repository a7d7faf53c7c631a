"""Result files written by the previous release (269564d, before the modes and the ``source`` column) still resume
(issue 26): the same command finds every image done and changes nothing; a file cut short completes in its own
columns, with the certificates the previous release would have written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from certify.cli import main

OLD = Path(__file__).parent / "data" / "release_269564d"
COMMANDS = {  # the commands that wrote them (tests/data/release_269564d/*.json, "command")
    "cohen": ["certify"],
    "sequential": ["certify", "--mode", "sequential", "--radii", "0.25,0.5"],
    "predict": ["predict"],
}


def _run(name: str, out: Path, command: list[str] | None = None) -> int:
    extra = [] if name == "predict" else ["--n0", "20"]
    return main([*(command or COMMANDS[name]), "--classifier", "small-cnn.mnist5k", "--dataset", "mnist5k:test", "--sigma", "0.25",
                 *extra, "--n", "300", "--batch", "100", "--skip", "100", "--max", "400", "--out", str(out), "--quiet",
                 "--device", "cpu"])


@pytest.mark.parametrize("name", COMMANDS)
def test_an_old_file_resumes_unchanged_and_a_cut_one_completes_in_its_columns(name, tmp_path):
    out = tmp_path / f"{name}.tsv"
    for suffix in (".tsv", ".json"):
        shutil.copy(OLD / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    before = out.read_text()
    assert _run(name, out) == 0 and out.read_text() == before  # every line checked, kept, nothing redone

    header, *lines = before.splitlines()
    out.write_text("\n".join([header, *lines[:-1]]) + "\n")  # killed before its last image
    assert _run(name, out) == 0
    after = out.read_text().splitlines()
    assert after[0] == header and "source" not in header.split("\t")  # the old columns, kept
    time = header.split("\t").index("time")
    without_time = lambda line: line.split("\t")[:time] + line.split("\t")[time + 1:]  # noqa: E731
    assert [without_time(line) for line in after[1:]] == [without_time(line) for line in lines]


def test_an_old_cohen_file_with_radii_it_never_read_still_resumes(tmp_path, capsys):
    """The previous release recorded `--radii` in Cohen's mode, where nothing read it; today the flag is refused
    there. Such a file resumes without it; a sequential file's radii are still compared."""
    import json

    out = tmp_path / "cohen.tsv"
    for suffix in (".tsv", ".json"):
        shutil.copy(OLD / f"cohen{suffix}", tmp_path / f"cohen{suffix}")
    manifest = json.loads(out.with_suffix(".json").read_text())
    manifest["settings"]["options"] = {"radii": [0.5]}
    out.with_suffix(".json").write_text(json.dumps(manifest))
    before = out.read_text()
    assert _run("cohen", out) == 0 and out.read_text() == before

    seq = tmp_path / "sequential.tsv"
    for suffix in (".tsv", ".json"):
        shutil.copy(OLD / f"sequential{suffix}", tmp_path / f"sequential{suffix}")
    assert _run("sequential", seq, ["certify", "--mode", "sequential", "--radii", "0.25,0.75"]) == 2
    assert "was started with options=" in capsys.readouterr().err
