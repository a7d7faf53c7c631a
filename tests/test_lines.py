"""certify/lines.py and each mode's `check_line`: result lines are checked against themselves and the run's
settings (issue 25, item 7); a resume drops, and analyze refuses, well-formed but false lines; every line a real
run writes, in every mode, passes the same checks."""

from __future__ import annotations

import json

import pytest
import torch

from certify.analysis import analyze
from certify.modes import check_line
from certify.settings import RunSettings
from certify.stats import max_radius, two_class_radius
from certify.runs import run_certification
from fixtures import toy_pipeline


def _data(count: int = 6):
    return [(torch.full((1, 2, 2), 0.15 * (i + 1)), i % 3) for i in range(count)]


def _rows(path):
    header, *lines = path.read_text().splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]


MODES = {
    "certify": dict(mode="certify"),
    "certify-two-class": dict(mode="certify", options={"bound": "two-class"}),
    "predict": dict(mode="predict"),
    "sequential-all": dict(mode="sequential", options={"radii": [0.05, 0.1, 0.3], "step": 10}),
    "sequential-argmax": dict(mode="sequential", options={"radii": [0.1, 0.2], "selection": "argmax", "step": 10}),
    "anytime": dict(mode="anytime", options={"step": 10}),
    "anytime-two-class": dict(mode="anytime", options={"bound": "two-class", "step": 10}),
    "attack": dict(mode="attack", options={"eps": [0.1, 0.3], "attack_steps": 2, "attack_m": 4}),
}


@pytest.mark.parametrize("name", MODES)
def test_every_line_a_run_writes_passes_the_checks(name, tmp_path):
    s = RunSettings(classifier="toy", dataset="toy", sigma=0.25, n0=10, n=200, batch=50, **MODES[name]).validate()
    out = run_certification(toy_pipeline(num_classes=3), _data(), s, tmp_path / "r.tsv", quiet=True)
    record = json.loads(out.with_suffix(".json").read_text())["settings"]
    rows = _rows(out)
    assert len(rows) == 6 and all(check_line(row, record) is None for row in rows), [check_line(r, record) for r in rows]


def _certified(tmp_path, **extra):
    s = RunSettings(classifier="toy", dataset="toy", sigma=0.25, n0=10, n=200, batch=50, **extra).validate()
    data = _data()
    reference = run_certification(toy_pipeline(num_classes=3), data, s, tmp_path / "ref.tsv", quiet=True)
    return s, data, reference


def _forge(path, forge):
    header, *lines = path.read_text().splitlines()
    columns = header.split("\t")
    rows = [dict(zip(columns, line.split("\t"))) for line in lines]
    for i, changes in forge.items():
        rows[i].update(changes)
        if "correct" not in changes and "correct" in rows[i]:  # only the intended falsehood
            rows[i]["correct"] = str(int(rows[i]["predict"] == rows[i]["label"] != "-1"))
    path.write_text("\n".join([header] + ["\t".join(r[c] for c in columns) for r in rows]) + "\n")


FORGERIES = {  # well-formed lines that are false (the hostile user's three, and a few more)
    "radius-from-nothing": {0: {"radius": "3.0", "n": "1", "nA": "1"}},
    "correct-not-predict": {1: {"correct": "1", "predict": "2", "label": "0"}},
    "n-beyond-the-run": {2: {"n": "99999", "nA": "99999"}},
    "radius-not-from-pA": {3: {"radius": "0.9"}},
    "pA-not-from-counts": {4: {"pA_lower": "0.999", "radius": "0.7725813208346839"}},
    "label-not-the-datasets": {4: {"label": "0"}},
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_resume_drops_false_lines_and_certifies_those_images_again(forgery, tmp_path, caplog):
    s, data, reference = _certified(tmp_path)
    out = tmp_path / "r.tsv"
    out.write_text(reference.read_text())
    out.with_suffix(".json").write_text(reference.with_suffix(".json").read_text())
    _forge(out, FORGERIES[forgery])
    run_certification(toy_pipeline(num_classes=3), data, s, out, quiet=True)
    (i,) = FORGERIES[forgery]
    assert f"r.tsv line {i + 2}:" in caplog.text and "dropped" in caplog.text
    without_time = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    in_order = lambda rows: sorted(without_time(rows), key=lambda r: int(r["idx"]))  # noqa: E731
    assert in_order(_rows(out)) == in_order(_rows(reference))


@pytest.mark.parametrize("forgery", [f for f in FORGERIES if f != "label-not-the-datasets"])
def test_analyze_refuses_a_file_with_a_false_line(forgery, tmp_path):
    _, _, reference = _certified(tmp_path)
    _forge(reference, FORGERIES[forgery])
    (i,) = FORGERIES[forgery]
    with pytest.raises(ValueError, match=rf"ref.tsv line {i + 2}: .*cannot be trusted"):
        analyze([reference], tmp_path / "rep")


@pytest.mark.parametrize("forge, what", [
    ({"certified": "1,1,1", "radius": "0.3", "predict": "0", "n": "10", "nA": "10"}, "beyond what n = 10 draws"),
    ({"certified": "0,1,0"}, "not a prefix"),
    ({"certified": "1,1"}, "2 decisions for the run's 3 radii"),
    ({"radius": "0.01"}, "does not follow from certified"),
])
def test_sequential_lines_must_follow_from_their_decisions(forge, what, tmp_path):
    _, _, reference = _certified(tmp_path, mode="sequential", options={"radii": [0.05, 0.1, 0.3], "step": 10})
    _forge(reference, {0: forge})
    with pytest.raises(ValueError, match=what):
        analyze([reference], tmp_path / "rep")


def test_predict_answers_must_follow_from_the_binomial_test():
    s = {"mode": "predict", "n": 100, "alpha": 0.001}
    row = {"label": "1", "predict": "1", "correct": "1", "nA": "52", "nB": "48", "n": "100"}
    assert "does not follow from nA = 52, nB = 48" in check_line(row, s)
    assert check_line({**row, "predict": "-1", "correct": "0"}, s) is None


def test_cohens_own_files_are_checked_for_what_they_say_about_themselves(tmp_path):
    f = tmp_path / "cohen.tsv"
    f.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.5\t1\t0:00:01.1\n1\t2\t5\t0.4\t1\t0:00:01.2\n")
    with pytest.raises(ValueError, match="line 3: correct = 1 does not follow from predict 5 and label 2"):
        analyze([f], tmp_path / "rep")


@pytest.mark.parametrize("name", ["certify-two-class", "anytime-two-class"])
def test_a_two_class_line_may_not_claim_a_runner_up_bound_below_what_n_draws_give(name, tmp_path):
    """The hostile user's line: pB_upper 1e-30 and the radius Theorem 1 gives from it, consistent with itself
    but beyond any bound n draws give (pB_upper >= 1 - (alpha/2)^(1/n)); resume and analyze once kept it."""
    s, _, reference = _certified(tmp_path, **MODES[name])
    record = json.loads(reference.with_suffix(".json").read_text())["settings"]
    i, row = next((i, r) for i, r in enumerate(_rows(reference)) if r["predict"] != "-1")
    forged = {"pB_upper": "1e-30", "radius": repr(two_class_radius(s.sigma, float(row["pA_lower"]), 1e-30))}
    assert check_line(row, record) is None and float(forged["radius"]) > max_radius(s.sigma, int(row["n"]), s.alpha)
    why = "pB_upper 1e-30 is below what n = " if name.startswith("certify") else "is beyond what n = "
    assert why in check_line({**row, **forged}, record)  # (the anytime mode's radius check comes first)
    _forge(reference, {i: forged})
    with pytest.raises(ValueError, match=rf"ref.tsv line {i + 2}: .*{why}"):
        analyze([reference], tmp_path / "rep")
