"""certify/outcomes.py, runs read back: Cohen's own six-column files (timedelta times, no n), a repeated idx
refused, labels unknown (-1) never correct, files of the same name told apart, and an attack run set against
the certification of the same images, naming each image it breaks below its certified radius."""

from __future__ import annotations

import numpy as np
import pytest

from certify.analysis import analyze
from certify.cli import main
from certify.outcomes import RunResult, load_result, pair, violations
from certify.runs import run_certification
from fixtures import cohen_file, result_lines, toy_run


def test_analysis_refuses_a_file_with_a_repeated_idx(tmp_path):
    g, data, s = toy_run(3)
    out = run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    body = out.read_text().splitlines()
    out.write_text("\n".join(body + body[1:]) + "\n")  # two runs appended the same images
    with pytest.raises(ValueError, match=r"holds idx \[0, 1, 2\] more than once"):
        load_result(out)


@pytest.mark.parametrize("content, message", [
    (b"hello world\n", r"lacks the columns \['correct', 'idx', 'label', 'predict', 'radius'\]"),
    (b"", r"lacks the columns"),                                      # once a report of an empty row
    (b"idx\tlabel\n", r"lacks the columns \['correct', 'predict'\]"),
    (b"idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\tabc\t1\t0.1\n", r"has a malformed line .*'abc'"),
    (b"\xf0\x28\x8c\x28", r"is not a text TSV \(byte 0 is not UTF-8\)"),
], ids=["junk", "empty", "header-only", "radius-text", "binary"])
def test_a_file_that_is_no_result_is_refused_naming_it(content, message, tmp_path, capsys):
    f = tmp_path / "f.tsv"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_result(f)
    assert main(["analyze", str(f), "--out", str(tmp_path / "rep")]) == 2
    assert capsys.readouterr().err.startswith(f"dsmooth analyze: error: {f} ") and not (tmp_path / "rep").exists()


def test_cohen_reference_tsv_with_timedelta_times_and_no_n(tmp_path):
    cohen = tmp_path / "cohen.tsv"
    cohen.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.52\t1\t0:00:01.162000\n"
                     "20\t8\t-1\t0.0\t0\t0:01:02.5\n")
    res = load_result(cohen)
    assert res.time.tolist() == [1.162, 62.5]
    summary = analyze([cohen], tmp_path / "rep", radii=[0, 0.5])
    row = summary["rows"][0]
    assert row[3:5] == [50.0, 50.0] and row[-1] != row[-1]  # samples/img unknown: NaN, printed blank, not 0
    assert (tmp_path / "rep" / "table.md").read_text().split("\n")[2].endswith("|  |")


def test_unknown_labels_and_abstentions_are_never_correct(tmp_path):
    f = tmp_path / "u.tsv"
    f.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t-1\t-1\t0.0\t0\t0.1\n1\t-1\t-1\t0.0\t0\t0.1\n")
    assert analyze([f], tmp_path / "rep", radii=[0])["rows"][0][3] == 0.0
    f.write_text(f.read_text().replace("0.0\t0\t0.1", "0.0\t1\t0.1"))  # a file that claims them correct is refused
    with pytest.raises(ValueError, match="line 2: correct = 1 does not follow from predict -1 and label -1"):
        analyze([f], tmp_path / "rep", radii=[0])
    g, data, s = toy_run(3, label=-1)
    out = run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    assert all(row[4] == "0" for row in result_lines(out)[1:])  # label -1 never matches, abstention or not


def test_files_with_the_same_stem_get_distinct_rows(tmp_path, capsys):
    a = cohen_file(tmp_path / "a" / "run.tsv", [0.1])
    b = cohen_file(tmp_path / "x" / "b" / "run.tsv", [0.0])
    summary = analyze([a, b, cohen_file(tmp_path / "solo.tsv", [0.2])], tmp_path / "rep", radii=[0])
    assert [row[0] for row in summary["rows"][:3]] == ["a/run", "b/run", "solo"]
    assert main(["analyze", str(a), str(a), "--out", str(tmp_path / "rep")]) == 2
    assert "is given twice" in capsys.readouterr().err
    assert main(["analyze", str(a), str(b), "--names", "same,same", "--out", str(tmp_path / "rep")]) == 2
    assert "--names must differ" in capsys.readouterr().err



def test_violations_are_found_and_named():
    z = np.zeros(3)
    cert = RunResult("c", np.array([0.8, 0.3, 0.9]), np.array([1, 1, 0]), np.array([2, 4, 1]), z, z, {},
                     idx=np.array([0, 1, 2]), label=np.array([2, 4, 5]))
    att = RunResult("a", z, np.array([1, 1, 0]), np.array([2, 4, 1]), z, z, {}, "attack", np.array([0, 1, 2]),
                    np.array([2, 4, 5]), (0.25, 0.5), np.array([[2, 7], [-1, 3], [1, 1]]))
    # image 0 broken at 0.5 < 0.8: a violation; image 1 broken at 0.5 >= 0.3: none; image 2 was not certified
    assert violations(cert, att) == ["image 0 (label 2) certified at radius 0.8 but PREDICT says 7 at eps 0.5"]
    assert att.robust_accuracy(0.25) == pytest.approx(2 / 3) and att.robust_accuracy(0.25, strict=True) == pytest.approx(1 / 3)



def test_an_attack_is_never_set_against_the_certificates_of_another_g():
    """`run.tsv` at sigma 0.25 and `run.attack.tsv` at sigma 1.0 (or with another vote) were paired by name and
    reported three 'violations' (or a false all-clear) between two different smoothed classifiers."""
    z = np.zeros(1)

    def run(name: str, mode: str = "certify", **settings) -> RunResult:
        s = {"classifier": "c", "denoiser": "d", "sigma": 0.25, "dataset": "x", "options": {}, **settings}
        return RunResult(name, z, z, z, z, z, {"settings": s}, mode)

    cert = run("run")
    assert pair(run("run.attack", "attack"), [cert]) is cert
    assert pair(run("run.attack", "attack", sigma=1.0), [cert]) is None
    assert pair(run("v1-attack", "attack"), [run("v3", options={"votes": 3})]) is None
    assert pair(run("run.attack", "attack", options={"votes": 1}), [cert]) is cert  # votes 1 is no vote
    bare = RunResult("run", z, z, z, z, z, {})  # Cohen's file: no manifest, paired by name as before
    assert pair(run("run.attack", "attack", sigma=1.0), [bare]) is bare
    twins = [run("run"), run("run.long")]  # two certifications of the same g: the longest name decides
    assert pair(run("run.long.attack", "attack"), twins) is twins[1]
