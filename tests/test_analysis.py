"""certify/analysis.py, ``analyze``: the report folder it writes (tables, curves, predictions, attacks, samples,
README) gets no file through a planted symbolic link, while a linked output folder is the user's choice.
The tables, curves and samples themselves: tests/test_tables.py, test_plots.py, test_samples.py."""

from __future__ import annotations

import pytest

from certify.analysis import analyze
from certify.cli import main
from fixtures import cohen_file


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

