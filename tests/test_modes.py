"""A certification mode is one module (issue 26): a toy mode, written here as a third-party package would ship it,
is found by the registry and runs through ``dsmooth certify --mode toy``, ``compare`` and ``analyze`` with its own
option and columns, without an edit anywhere else; and the run schema is the one source of every flag and key."""

from __future__ import annotations

import json
import textwrap

import pytest

from certify.cli import build_parser, main
from certify.modes import MODES, list_modes
from certify.schema import FLAG, KEYWORDS
from certify.settings import RunSettings, schema

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
    dist = tmp_path / "toy_mode-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-mode\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[denoised_smoothing.modes]\ntoy = toy_mode:make\n")
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


def test_every_setting_has_one_flag_and_one_config_key_and_help():
    commands = build_parser()._subparsers._group_actions[0].choices
    flags = {f for command in ("certify", "predict", "attack") for action in commands[command]._actions
             for f in action.option_strings}
    for name, option in schema().items():
        if name == "mode":
            continue
        assert option.flag in flags, name  # a flag of the command that runs its mode
        assert option.key == name and option.help, name  # the compare key is the name the manifest records
        assert option.kind in (FLAG, KEYWORDS) or option.check is not None or option.choices or name in (
            "classifier", "dataset", "denoiser", "mode", "radii"), f"{name}: no rule checks it"
    assert len({o.flag for o in schema().values()}) == len(schema())


def test_settings_and_options_are_checked_once_where_they_enter():
    for bad, message in [(dict(sigma=True), "sigma must be a positive, finite number"),
                         (dict(sigma=500), "far beyond any meaningful noise level"),
                         (dict(seed="abc"), "seed must be an int in [0, 2^63)"),
                         (dict(batch=0), "batch must be an int >= 1"),
                         (dict(mode="sequental"), "did you mean 'sequential'"),
                         (dict(options={"futility": 0.3}), "futility is an option of the sequential mode"),
                         (dict(mode="sequential", options={"radii": [0.5], "step": 2000}, batch=1000),
                          "step 2000 is more than the batch of 1000")]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("^", r"\^").replace(")", r"\)")
                           .replace("(", r"\(")):
            RunSettings(**{"classifier": "c", "dataset": "d", "sigma": 0.5, **bad}).validate()
