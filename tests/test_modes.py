"""certify/modes/: a certification mode is one module (issue 26). A toy mode, written here as a third-party package
would ship it, is found by the registry and runs through ``dsmooth certify --mode toy``, ``compare`` and
``analyze`` with its own option and columns, without an edit anywhere else; the certify and anytime modes' --bound
writes its column and is part of a run's identity. (The sequential and anytime modes: test_sequential.py; attack:
test_attack.py; each mode's line checks: test_lines.py; the run schema: test_settings.py.)"""

from __future__ import annotations

import json
import textwrap

import pytest

from certify.cli import main
from certify.modes import MODES, list_modes
from fixtures import fake_distribution

TOY = '''
"""toy: the most frequent class of a few noise draws, and how many votes it got (a mode in one file)."""
from dataclasses import dataclass

from certify.modes import Mode, split
from certify.schema import Option, whole


@dataclass(frozen=True)
class Votes:
    prediction: int
    votes: int


class Toy(Mode):
    name = "toy"
    summary = "the most frequent class of --toy-draws noise draws"
    columns = ("idx", "label", "predict", "correct", "time", "votes")
    uses_n0 = False
    options = (Option("toy_draws", "noise draws per image", kind=int, check=whole("toy_draws"), default=7),)

    def cells(self, result):
        return {"predict": str(result.prediction), "votes": str(result.votes)}

    def check_line(self, row, settings):
        votes = int(row["votes"])
        return None if 0 < votes <= settings["options"]["toy_draws"] else f"votes {votes} is impossible"

    def stream(self, smoothed, items, s):
        for position, (idx, x, label) in enumerate(items):
            counts = smoothed.sample_counts(x, s.options.toy_draws, s.batch, smoothed.generator(s.seed, idx, "prediction"))
            yield position, Votes(int(counts.argmax()), int(counts.max())), 0.0


def make(identifier=None):
    return Toy(identifier)
'''


@pytest.fixture
def toy_mode(tmp_path, monkeypatch):
    """The toy mode as an installed distribution with an entry point in denoised_smoothing.modes."""
    (tmp_path / "toy_mode.py").write_text(textwrap.dedent(TOY))
    fake_distribution(tmp_path, "toy-mode", "1.0", "[denoised_smoothing.modes]\ntoy = toy_mode:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    MODES.list()  # the built-in modes, loaded before the patch below
    monkeypatch.setattr(MODES, "_entries", dict(MODES._entries))
    monkeypatch.setattr(MODES, "_plugins_loaded", False)
    yield
    MODES.list()


def test_a_toy_mode_runs_through_certify_compare_and_analyze(toy_mode, tmp_path, capsys):
    assert "toy" in list_modes()
    out = tmp_path / "toy.tsv"
    args = ["certify", "--mode", "toy", "--toy-draws", "9", "--classifier", "small-cnn.mnist5k", "--dataset",
            "mnist5k:test", "--sigma", "0.25", "--skip", "250", "--batch", "9", "--out", str(out), "--quiet"]
    assert main(args) == 0
    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert header == ["idx", "label", "predict", "correct", "time", "votes", "source"] and len(rows) == 4
    assert all(0 < int(r[5]) <= 9 for r in rows)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["settings"]["mode"] == "toy" and manifest["settings"]["options"] == {"toy_draws": 9}
    assert main(args) == 0  # resumes: every line checked by the toy's own check_line, nothing to redo
    assert out.read_text().count("\n") == 5

    config = tmp_path / "c.yaml"
    config.write_text("dataset: mnist5k:test\nmode: toy\ntoy_draws: 5\nskip: 500\nbatch: 5\n"
                      "pipelines:\n  - {name: a, classifier: small-cnn.mnist5k, sigma: 0.25}\n")
    assert main(["compare", "--config", str(config), "--out", str(tmp_path / "rep"), "--quiet"]) == 0
    assert json.loads((tmp_path / "rep" / "a.json").read_text())["settings"]["options"] == {"toy_draws": 5}
    assert main(["certify", "--mode", "toy", "--toy-draws", "0", "--classifier", "small-cnn.mnist5k", "--dataset",
                 "mnist5k:test", "--sigma", "0.25", "--out", str(tmp_path / "x.tsv")]) == 2
    assert "toy_draws must be an int >= 1, got 0" in capsys.readouterr().err


def test_cli_two_class_column_and_refusals(tmp_path, capsys):
    args = ["certify", "--classifier", "small-cnn.mnist5k", "--dataset", "mnist5k:test", "--sigma", "0.5",
            "--n0", "20", "--n", "200", "--batch", "220", "--skip", "250", "--max", "1000", "--quiet"]
    out = tmp_path / "t.tsv"
    assert main([*args, "--bound", "two-class", "--out", str(out)]) == 0
    lines = [l.split("\t") for l in out.read_text().splitlines()]
    assert lines[0][-2:] == ["pB_upper", "source"] and len(lines) == 5 and all(0 <= float(l[-2]) <= 1 for l in lines[1:])
    assert main([*args, "--out", str(out)]) == 2  # resuming with the other bound is refused
    assert "bound" in capsys.readouterr().err
    assert main([*args, "--bound", "one-class", "--out", str(tmp_path / "o.tsv")]) == 0
    assert (tmp_path / "o.tsv").read_text().splitlines()[0].split("\t")[-2:] == ["n0", "source"]  # no pB_upper
    assert main([*args, "--mode", "sequential", "--radii", "0.25", "--bound", "two-class", "--out", str(tmp_path / "s.tsv")]) == 2
    err = capsys.readouterr().err
    assert "bound is an option of the anytime, certify modes, not of 'sequential'" in err and "--mode anytime --bound two-class gives" in err
    assert main([*args, "--mode", "anytime", "--bound", "two-class", "--out", str(tmp_path / "a.tsv")]) == 0
    assert (tmp_path / "a.tsv").read_text().splitlines()[0].split("\t")[-2] == "pB_upper"

