"""Issue 13, result files: lock, validated resume, atomic manifest, links, redaction, analysis of odd files."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from certify.analysis import analyze, load_result
from certify.cli import main
from certify.compare import load_compare_config
from certify.results import OutputLock, write_manifest
from certify.settings import RunSettings, package_versions
from certify.runs import run_certification
from certify.smoothing import Smoothed

DSMOOTH = [sys.executable, "-m", "certify.cli"]


def toy(n_images: int = 6, label: int = 0):
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    data = [(torch.full((1, 2, 2), 0.1 * (i + 1)), label) for i in range(n_images)]
    settings = RunSettings(classifier="toy", dataset="toy", sigma=0.25, n0=10, n=50, batch=25)
    return Smoothed(f, sigma=0.25, num_classes=2), data, settings


def lines(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def without_time(rows):
    return [r[:5] + r[6:] for r in rows]


# -- 3: one writer per output ---------------------------------------------------------------------------
def test_a_second_run_on_the_same_output_is_refused_naming_the_holder(tmp_path):
    g, data, s = toy()
    out = tmp_path / "r.tsv"
    holder = OutputLock(out)
    assert holder.acquire() is None
    with pytest.raises(ValueError, match=r"r.tsv is being written by another run \(pid \d+ on "):
        run_certification(g, data, s, out, quiet=True)
    assert not out.exists()
    holder.release()
    run_certification(g, data, s, out, quiet=True)
    assert len(lines(out)) == 7 and not Path(str(out) + ".lock").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "r.tsv"
    code = f"from certify.results import OutputLock; OutputLock({str(out)!r}).acquire(); print('held', flush=True); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert "being written by another run" in OutputLock(out).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = OutputLock(out)
    assert lock.acquire() is None
    lock.release()


def test_analysis_refuses_a_file_with_a_repeated_idx(tmp_path):
    g, data, s = toy(3)
    out = run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    body = out.read_text().splitlines()
    out.write_text("\n".join(body + body[1:]) + "\n")  # two runs appended the same images
    with pytest.raises(ValueError, match=r"holds idx \[0, 1, 2\] more than once"):
        load_result(out)


# -- 5: resume validates every line ----------------------------------------------------------------------
def test_resume_drops_invalid_lines_and_says_which(tmp_path, caplog):
    g, data, s = toy()
    reference = run_certification(g, data, s, tmp_path / "ref.tsv", quiet=True)
    out = tmp_path / "r.tsv"
    run_certification(g, data[:3], s, out, quiet=True)
    header, *rows = out.read_text().splitlines()
    torn = "5\t0\t0\t1.11\t1\t0.34"  # a torn line that still ends in a newline: columns missing
    foreign = "\t".join(["999"] + rows[0].split("\t")[1:])  # not one of this run's images
    out.write_text("\n".join([header, rows[0], torn, "4", rows[1], foreign, rows[2].replace("\t0.", "\tx.", 1)]) + "\n")
    run_certification(g, data, s, out, quiet=True)
    for number, what in ((3, "6 columns, expected 11"), (4, "1 columns"), (6, "idx 999"), (7, "column")):
        assert f"r.tsv line {number}: {what}" in caplog.text
    assert without_time(lines(out)) == without_time(lines(reference))


# -- 9: manifest written atomically; a damaged one says what to do ----------------------------------------
def test_a_failed_manifest_write_leaves_the_old_one_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "r.tsv"
    write_manifest(out, {"settings": {"a": 1}})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "killed")))
    with pytest.raises(OSError):
        write_manifest(out, {"settings": {"a": 2}})
    assert json.loads((tmp_path / "r.json").read_text()) == {"settings": {"a": 1}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_damaged_manifest_gets_a_message_that_says_what_to_do(tmp_path):
    g, data, s = toy(2)
    out = run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    (tmp_path / "r.json").write_text("")  # what an in-place write killed at the wrong moment left
    with pytest.raises(ValueError, match=r"manifest .*r.json is damaged .*Restore it, or move r.tsv and r.json away"):
        run_certification(g, data, s, out, quiet=True)


# -- 11: no links followed, no secrets recorded ------------------------------------------------------------
@pytest.mark.parametrize("planted", ["r.json", "r.tsv", "r.tsv.lock"])
def test_planted_symlinks_are_not_followed(tmp_path, planted):
    g, data, s = toy(2)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / planted).symlink_to(victim)
    with pytest.raises(ValueError, match="symbolic link"):
        run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    assert victim.read_text() == "precious\n"


def test_credentials_in_urls_never_reach_the_manifest(tmp_path, monkeypatch):
    g, data, s = toy(2)
    s.options = {"classifier_kwargs": {"endpoint": "https://user:pw@api.example/v1?key=SECRET&model=m"}}
    monkeypatch.setattr(sys, "argv", ["dsmooth", "certify", "--classifier-arg", "endpoint=https://h/x?token=SECRET"])
    out = run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    manifest = (tmp_path / "r.json").read_text()
    assert "SECRET" not in manifest and "pw@" not in manifest and "model=m" in manifest
    run_certification(g, data + data, s, out, quiet=True)  # resumes: redacted settings compare equal


# -- 4, 6, 7: analysis of predict files, Cohen's files, unknown labels, names ------------------------------
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
    g, data, s = toy(3, label=-1)
    out = run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    assert all(row[4] == "0" for row in lines(out)[1:])  # label -1 never matches, abstention or not


def test_only_predict_files_give_a_predictions_table(tmp_path):
    p = tmp_path / "p.tsv"
    p.write_text("idx\tlabel\tpredict\tcorrect\ttime\tnA\tnB\tn\n0\t1\t1\t1\t0.1\t90\t5\t100\n1\t2\t-1\t0\t0.1\t40\t38\t100\n")
    summary = analyze([p], tmp_path / "rep")
    assert summary["rows"] == [] and summary["predictions"]["rows"][0][3:5] == [50.0, 50.0]
    assert not (tmp_path / "rep" / "table.md").exists()


def test_names_must_match_the_files(tmp_path, capsys):
    g, data, s = toy(2)
    a = run_certification(g, data, s, tmp_path / "a.tsv", quiet=True)
    b = run_certification(g, data, s, tmp_path / "b.tsv", quiet=True)
    assert main(["analyze", str(a), str(b), "--names", "x", "--out", str(tmp_path / "rep")]) == 2
    assert "--names gives 1 name(s) for 2 file(s)" in capsys.readouterr().err


# -- 12 / 7: compare configs fail before anything is certified ---------------------------------------------
@pytest.mark.parametrize("extra,message", [("n: 20.9\n", "n must be an int >= 1, got 20.9"),
                                           ("radii: abc\n", "radii must be a list of numbers"),
                                           ("n: [1\n", "is not valid YAML")])
def test_compare_config_errors(tmp_path, capsys, extra, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\npipelines:\n  - {name: a, classifier: small-cnn, sigma: 0.5}\n" + extra)
    assert main(["compare", "--config", str(cfg), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rep").exists()


# -- 12: file-system failures and devices are one line ------------------------------------------------------
@pytest.mark.parametrize("code,message", [(errno.ENOSPC, "the disk is full .* run the same command again"),
                                          (errno.EACCES, "cannot write .*choose another --out"),
                                          (errno.EROFS, "cannot write .*choose another --out")])
def test_unwritable_output_is_one_clear_error(tmp_path, monkeypatch, code, message):
    import certify.runs as runs

    def fail(path):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(runs, "open_append", fail)
    g, data, s = toy(2)
    with pytest.raises(ValueError, match=message):
        run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    assert not (tmp_path / "r.tsv").exists() and not (tmp_path / "r.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    code = main(["certify", "--classifier", "small-cnn", "--dataset", "digits:test", "--sigma", "0.5", "--n", "10",
                 "--device", "cuda", "--out", str(tmp_path / "r.tsv")])
    assert code == 2 and "torch sees no CUDA GPU" in capsys.readouterr().err


# -- 13: labels the classifier cannot output ----------------------------------------------------------------
def test_labels_beyond_num_classes_are_refused_before_writing(tmp_path):
    g, data, s = toy(3, label=7)
    with pytest.raises(ValueError, match="label 7, but the classifier has 2 classes"):
        run_certification(g, type("D", (list,), {"targets": [7, 7, 7]})(data), s, tmp_path / "r.tsv", quiet=True)
    assert list(tmp_path.iterdir()) == []


# -- 16: plugin versions in the manifest --------------------------------------------------------------------
def test_manifest_records_plugin_distribution_versions(tmp_path, monkeypatch):
    dist = tmp_path / "fakeplug-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[denoised_smoothing.denoisers]\nfake = fakeplug_mod:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_versions()["fakeplug"] == "1.2.3"


# -- issue 25, 14 and 5: the report's grid, envelope, names, LaTeX; no report file written through a link ------
COHEN_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def cohen_file(path: Path, radii: list[float], first_idx: int = 0, manifest: dict | None = None) -> Path:
    """A result file in Cohen's six columns, every image correct at the given radius; a manifest if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(COHEN_HEADER + "".join(f"{first_idx + i}\t1\t1\t{r}\t1\t0.1\n" for i, r in enumerate(radii)))
    if manifest is not None:
        path.with_suffix(".json").write_text(json.dumps(manifest))
    return path


def radii_of(header: list[str]) -> list[float]:
    return [float(h[2:]) for h in header if h.startswith("r=")]


def test_the_default_grid_follows_what_the_runs_can_certify(tmp_path):
    """sigma 0.25 with n = 100 certifies at most 0.375: the grid stops there (it went to 1.5), in round steps."""
    g, data, s = toy(3)
    s.n, s.alpha = 100, 0.001
    out = run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    assert radii_of(analyze([out], tmp_path / "rep")["header"]) == [0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35]
    # Cohen's files have no manifest: up to the largest radius in the file
    cohen = cohen_file(tmp_path / "cohen.tsv", [0.52, 0.1])
    assert radii_of(analyze([cohen], tmp_path / "rep2")["header"]) == [0, 0.1, 0.2, 0.3, 0.4, 0.5]
    # sequential runs: the radii they decided
    seq = cohen_file(tmp_path / "seq.tsv", [0.2, 0.0], manifest={"settings": {
        "mode": "sequential", "sigma": 0.5, "n": 10_000, "alpha": 0.001, "options": {"radii": [0.2, 0.1]}}})
    assert radii_of(analyze([seq], tmp_path / "rep3")["header"]) == [0, 0.1, 0.2]


def test_the_envelope_combines_only_runs_on_the_same_images(tmp_path, capsys):
    a = cohen_file(tmp_path / "a.tsv", [0.1, 0.0])
    b = cohen_file(tmp_path / "b.tsv", [0.3, 0.1])
    other = cohen_file(tmp_path / "other.tsv", [0.9, 0.9], first_idx=50)  # other images: not comparable
    assert main(["analyze", str(a), str(b), str(other), "--out", str(tmp_path / "rep"), "--radii", "0,0.2,0.5"]) == 0
    rows = {row[0]: row for row in csv.reader(open(tmp_path / "rep" / "table.csv"))}
    assert [name for name in rows if "envelope" in name] == ["envelope of image set 1 (best per radius)"]
    assert rows["envelope of image set 1 (best per radius)"][3:6] == ["100.0", "50.0", "0.0"]  # a and b, not other
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "only over runs on the same images" in table and "image set 2 = no manifest, 2 images (other)" in table
    assert "image set 2" in capsys.readouterr().out


def test_files_with_the_same_stem_get_distinct_rows(tmp_path, capsys):
    a = cohen_file(tmp_path / "a" / "run.tsv", [0.1])
    b = cohen_file(tmp_path / "x" / "b" / "run.tsv", [0.0])
    summary = analyze([a, b, cohen_file(tmp_path / "solo.tsv", [0.2])], tmp_path / "rep", radii=[0])
    assert [row[0] for row in summary["rows"][:3]] == ["a/run", "b/run", "solo"]
    assert main(["analyze", str(a), str(a), "--out", str(tmp_path / "rep")]) == 2
    assert "is given twice" in capsys.readouterr().err
    assert main(["analyze", str(a), str(b), "--names", "same,same", "--out", str(tmp_path / "rep")]) == 2
    assert "--names must differ" in capsys.readouterr().err


def test_a_latex_table_in_cohens_layout(tmp_path):
    a = cohen_file(tmp_path / "mse_0.25.tsv", [0.3, 0.1])
    b = cohen_file(tmp_path / "alone.tsv", [0.1, 0.0])
    analyze([a, b], tmp_path / "rep", radii=[0, 0.25])
    lines = (tmp_path / "rep" / "table.tex").read_text().splitlines()
    assert lines[1:4] == [r"\begin{tabular}{lcc}", r" & $r = 0$ & $r = 0.25$ \\", r"\hline"]
    assert lines[4:] == [r"mse\_0.25 & \textbf{100} & \textbf{50} \\", r"alone & \textbf{100} & 0 \\", r"\end{tabular}"]


WRITTEN = ["table.md", "table.csv", "table.tex", "high_probability.md", "curves.png", "predictions.md",
           "empirical.md", "samples.png", "README.md"]


@pytest.mark.parametrize("planted", WRITTEN)
def test_no_report_file_is_written_through_a_symlink(tmp_path, planted, capsys):
    cert = cohen_file(tmp_path / "c.tsv", [0.3, 0.0])
    pred = tmp_path / "p.tsv"
    pred.write_text("idx\tlabel\tpredict\tcorrect\ttime\tnA\tnB\tn\n0\t1\t1\t1\t0.1\t90\t5\t100\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / planted).symlink_to(victim)
    assert main(["analyze", str(cert), str(pred), "--out", str(tmp_path / "rep")]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "precious\n" and sorted(p.name for p in (tmp_path / "rep").iterdir()) == [planted]


def test_a_symlinked_output_folder_is_the_users_choice(tmp_path):
    (tmp_path / "disk").mkdir()
    (tmp_path / "rep").symlink_to(tmp_path / "disk")
    analyze([cohen_file(tmp_path / "c.tsv", [0.3])], tmp_path / "rep", radii=[0])
    assert (tmp_path / "disk" / "table.md").is_file() and not any(p.name.endswith(".tmp") for p in (tmp_path / "disk").iterdir())
