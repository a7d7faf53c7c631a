"""certify/results.py, the files of a run: one writer per output (the lock names its holder and dies with it), every
line read back checked (a resume drops the bad ones and says which), the manifest written atomically and a damaged
one named with what to do, no symbolic link followed."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from certify.results import OutputLock, write_manifest
from certify.runs import run_certification
from fixtures import result_lines, table_without_time, toy_run


def test_a_second_run_on_the_same_output_is_refused_naming_the_holder(tmp_path):
    g, data, s = toy_run()
    out = tmp_path / "r.tsv"
    holder = OutputLock(out)
    assert holder.acquire() is None
    with pytest.raises(ValueError, match=r"r.tsv is being written by another run \(pid \d+ on "):
        run_certification(g, data, s, out, quiet=True)
    assert not out.exists()
    holder.release()
    run_certification(g, data, s, out, quiet=True)
    assert len(result_lines(out)) == 7 and not Path(str(out) + ".lock").exists()


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


def test_resume_drops_invalid_lines_and_says_which(tmp_path, caplog):
    g, data, s = toy_run()
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
    assert table_without_time(out) == table_without_time(reference)


def test_a_failed_manifest_write_leaves_the_old_one_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "r.tsv"
    write_manifest(out, {"settings": {"a": 1}})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "killed")))
    with pytest.raises(OSError):
        write_manifest(out, {"settings": {"a": 2}})
    assert json.loads((tmp_path / "r.json").read_text()) == {"settings": {"a": 1}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_damaged_manifest_gets_a_message_that_says_what_to_do(tmp_path):
    g, data, s = toy_run(2)
    out = run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    (tmp_path / "r.json").write_text("")  # what an in-place write killed at the wrong moment left
    with pytest.raises(ValueError, match=r"manifest .*r.json is damaged .*Restore it, or move r.tsv and r.json away"):
        run_certification(g, data, s, out, quiet=True)


@pytest.mark.parametrize("planted", ["r.json", "r.tsv", "r.tsv.lock"])
def test_planted_symlinks_are_not_followed(tmp_path, planted):
    g, data, s = toy_run(2)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / planted).symlink_to(victim)
    with pytest.raises(ValueError, match="symbolic link"):
        run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    assert victim.read_text() == "precious\n"

