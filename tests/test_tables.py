"""certify/tables.py, the tables of a report: the radius grid from what the runs can certify, certified accuracy and
the envelope over runs on the same images only, Cohen's high-probability bound, PREDICT runs in a table of their
own, and the LaTeX table in Cohen's layout."""

from __future__ import annotations

import csv
import math

from certify.analysis import analyze
from certify.cli import main
from certify.runs import run_certification
from fixtures import cohen_file, digits_args, toy_run


def radii_of(header: list[str]) -> list[float]:
    return [float(h[2:]) for h in header if h.startswith("r=")]


def test_only_predict_files_give_a_predictions_table(tmp_path):
    p = tmp_path / "p.tsv"
    p.write_text("idx\tlabel\tpredict\tcorrect\ttime\tnA\tnB\tn\n0\t1\t1\t1\t0.1\t90\t5\t100\n1\t2\t-1\t0\t0.1\t40\t38\t100\n")
    summary = analyze([p], tmp_path / "rep")
    assert summary["rows"] == [] and summary["predictions"]["rows"][0][3:5] == [50.0, 50.0]
    assert not (tmp_path / "rep" / "table.md").exists()


def test_the_default_grid_follows_what_the_runs_can_certify(tmp_path):
    """sigma 0.25 with n = 100 certifies at most 0.375: the grid stops there (it went to 1.5), in round steps."""
    g, data, s = toy_run(3)
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


def test_a_latex_table_in_cohens_layout(tmp_path):
    a = cohen_file(tmp_path / "mse_0.25.tsv", [0.3, 0.1])
    b = cohen_file(tmp_path / "alone.tsv", [0.1, 0.0])
    analyze([a, b], tmp_path / "rep", radii=[0, 0.25])
    lines = (tmp_path / "rep" / "table.tex").read_text().splitlines()
    assert lines[1:4] == [r"\begin{tabular}{lcc}", r" & $r = 0$ & $r = 0.25$ \\", r"\hline"]
    assert lines[4:] == [r"mse\_0.25 & \textbf{100} & \textbf{50} \\", r"alone & \textbf{100} & 0 \\", r"\end{tabular}"]



def test_predict_mode_and_analyze(cnn_dir, tmp_path, capsys):
    pred = tmp_path / "p.tsv"
    args = digits_args(cnn_dir, pred)
    args[0] = "predict"
    i = args.index("--n0")
    del args[i:i + 2]
    assert main(args) == 0
    # PREDICT has no radius (issue 13): its file has no radius column and stays out of certified tables
    assert pred.read_text().splitlines()[0].split("\t")[:5] == ["idx", "label", "predict", "correct", "time"]
    cert, cert2 = tmp_path / "c.tsv", tmp_path / "c2.tsv"
    assert main(digits_args(cnn_dir, cert)) == 0
    assert main(digits_args(cnn_dir, cert2, sigma="0.25")) == 0
    assert main(["analyze", str(cert), str(cert2), str(pred), "--out", str(tmp_path / "rep"), "--radii", "0,0.25"]) == 0
    for name in ("table.md", "table.csv", "high_probability.md", "curves.png", "predictions.md"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert "envelope" in (tmp_path / "rep" / "table.md").read_text()
    assert "| p |" not in (tmp_path / "rep" / "table.md").read_text() and "| p |" in (tmp_path / "rep" / "predictions.md").read_text()
    table = {row[0]: row for row in csv.reader(open(tmp_path / "rep" / "table.csv"))}
    for line in (tmp_path / "rep" / "high_probability.md").read_text().splitlines()[4:]:
        name, m, alpha, *cells = [c.strip() for c in line.strip("|").split("|")]
        for cell, acc in zip(cells, table[name][3:5]):  # Cohen's bound on the table's accuracy, clipped at 0
            bound = float(acc) / 100 - float(alpha) - math.sqrt(float(alpha) * (1 - float(alpha)) * math.log(1000) / int(m))
            assert float(cell) == round(100 * max(0.0, bound - math.log(1000) / (3 * int(m))), 1)

