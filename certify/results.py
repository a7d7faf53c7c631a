"""The result files of a run: the TSV (one line per image), its JSON manifest, shards and the lock.

The TSV starts with Cohen et al.'s columns ``idx label predict radius correct time`` (radius at full
precision, correct as 0/1), so their analysis scripts read it unchanged; extra columns follow. PREDICT
runs have no radius column. Every line is validated when read back: a line a kill tore, or that
another program wrote, is named and dropped (the image is simply certified again), never trusted.

Safety of what is written: nothing is written through a symbolic link (a link planted in a shared
folder must not redirect a run's output), whole-file writes go to an unpredictable temporary name
and are renamed into place (a kill leaves the old file or the new one, never a torn one), and a run
holds an exclusive lock on its output for as long as it writes.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .redact import redact

log = logging.getLogger(__name__)

_CERTIFY = ("idx", "label", "predict", "radius", "correct", "time", "pA_lower", "nA", "n", "n0")
COLUMNS = {
    "certify": _CERTIFY,      # Cohen's CERTIFY: fixed n
    "predict": ("idx", "label", "predict", "correct", "time", "nA", "nB", "n"),  # no radius: PREDICT has none
    "sequential": (*_CERTIFY, "certified"),  # anytime-valid test per radius; n = samples used
    "anytime": _CERTIFY,      # anytime-valid confidence sequence; pA_lower = running max of L_n
    # SmoothAdv: predict/correct at the clean image, then PREDICT at the attack's point for each eps (one
    # line per image: its attacks share the image's noise streams and resume together)
    "attack": ("idx", "label", "predict", "correct", "time", "eps", "adv_predict", "n"),
}
COHEN_COLUMNS = _CERTIFY[:6]


def manifest_path(out: Path) -> Path:
    return Path(out).with_suffix(".json")


def shard_paths(out: Path) -> list[Path]:
    """The shards ``OUT.part-RANK`` of a multi-process run on ``out``, matched by name exactly (a glob would
    read ``[``, ``*`` or ``?`` in the name as a pattern, and take another run's shards for this one's)."""
    out = Path(out)
    shard = re.compile(re.escape(out.name) + r"\.part-\d+")
    return sorted(p for p in out.parent.iterdir() if shard.fullmatch(p.name)) if out.parent.is_dir() else []


def refuse_links(*paths: Path, option: str = "--out") -> None:
    """A clear error if any output path is a symbolic link (we never write through one); ``option`` chooses them."""
    for path in paths:
        if Path(path).is_symlink():
            raise ValueError(f"{path} is a symbolic link; refusing to write through it (it may point at "
                             f"another file). Remove it or choose another {option}")


def write_atomic(path: Path, text: str | bytes) -> None:
    """Replace ``path`` by ``text`` (or bytes: an image) at once: an unpredictable temporary file in the
    same folder, renamed; a symbolic link at ``path`` is refused, never written through."""
    path = Path(path)
    refuse_links(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_append(path: Path):
    """Open ``path`` for appending, line-buffered, refusing a symbolic link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            refuse_links(path)
        raise
    return os.fdopen(fd, "a", buffering=1)


# ----------------------------------------------------------------------------------------------- manifest
def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest beside ``out`` (None if there is none); a damaged one is a clear error."""
    mpath = manifest_path(out)
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(mpath.read_text())
        if not isinstance(manifest, dict):
            raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
        return manifest
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the manifest {mpath} is damaged ({exc}); it records the settings {Path(out).name} was "
                         f"made with. Restore it, or move {Path(out).name} and {mpath.name} away to start afresh") from None


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    write_atomic(manifest_path(out), json.dumps(manifest, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------- lines
def _int(text: str) -> int:
    return int(text)


def _nonneg_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{text!r} is not a finite number >= 0")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r} is not in [0, 1]")
    return value


def _flag(text: str) -> int:
    if text not in ("0", "1"):
        raise ValueError(f"{text!r} is not 0 or 1")
    return int(text)


def _flags(text: str) -> str:
    if text and not all(v in ("0", "1") for v in text.split(",")):
        raise ValueError(f"{text!r} is not a comma-separated list of 0/1")
    return text


def _floats(text: str) -> str:
    if not all(math.isfinite(float(v)) and float(v) > 0 for v in text.split(",")):
        raise ValueError(f"{text!r} is not a comma-separated list of positive numbers")
    return text


def _ints(text: str) -> str:
    for v in text.split(","):
        int(v)
    return text


_PARSERS = {"idx": _int, "label": _int, "predict": _int, "radius": _nonneg_float, "correct": _flag,
            "time": _nonneg_float, "pA_lower": _probability, "pB_upper": _probability, "nA": _int, "nB": _int, "n": _int, "n0": _int,
            "certified": _flags, "eps": _floats, "adv_predict": _ints}


def escape_cell(text: str) -> str:
    """``text`` safe for one TSV cell: backslash, tab, newline and other control characters escaped
    (a file name may hold any of them), everything else (non-ASCII names too) kept as it is.

    >>> escape_cell("cat/a" + chr(9) + "b.png") == "cat/a" + chr(92) + "tb.png"
    True
    """
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def validate_line(fields: Sequence[str], columns: Sequence[str]) -> str | None:
    """What is wrong with one TSV line (None when it is a complete line of these columns)."""
    if len(fields) != len(columns):
        return f"{len(fields)} columns, expected {len(columns)}"
    for name, text in zip(columns, fields):
        try:
            _PARSERS.get(name, str)(text)
        except ValueError:
            return f"column {name!r} is {text!r}"
    return None


def read_results(path: Path, columns: Sequence[str], allowed: Iterable[int] | None = None,
                 check: Callable[[dict[str, str]], str | None] | None = None
                 ) -> tuple[dict[int, list[str]], list[str]]:
    """({idx: fields} of the valid lines, [what was wrong with each other line, by line number]).

    An unterminated last line (a killed write) and a line of the wrong shape, type, or index (not
    among ``allowed``, or repeated), or one that ``check`` (given the line as {column: text}) finds
    false (`certify.lines.check_line`), are reported and left out.
    """
    path = Path(path)
    if not path.exists():
        return {}, []
    lines = path.read_text().split("\n")
    problems: list[str] = []
    if lines[-1]:
        problems.append(f"{path.name} line {len(lines)}: unterminated (a write was cut off)")
    lines = lines[:-1]
    if not lines:
        return {}, problems
    if tuple(lines[0].split("\t")) != tuple(columns):
        raise ValueError(f"{path} has columns {lines[0].split(chr(9))}, expected {list(columns)}; "
                         f"it was written by another mode or version: use another --out")
    allowed = set(allowed) if allowed is not None else None
    rows: dict[int, list[str]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        problem = validate_line(fields, columns)
        if problem is None and allowed is not None and int(fields[0]) not in allowed:
            problem = f"idx {fields[0]} is not one of this run's images"
        if problem is None and int(fields[0]) in rows:
            problem = f"idx {fields[0]} appears twice"
        if problem is None and check is not None:
            problem = check(dict(zip(columns, fields)))
        if problem is not None:
            problems.append(f"{path.name} line {number}: {problem}")
            continue
        rows[int(fields[0])] = fields
    return rows, problems


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, every line as {column: text}) of a TSV with a header (ours, or another tool's such as Cohen's),
    no quoting: a cell is what lies between two tabs. Reports read through this; a run's own resume uses
    `read_results`. A file that is not UTF-8 text is one clear error."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a text TSV (byte {exc.start} is not UTF-8); expected a result file") from None


def repair(path: Path, columns: Sequence[str], allowed: Iterable[int],
           check: Callable[[dict[str, str]], str | None] | None = None) -> dict[int, list[str]]:
    """Keep only the valid lines of ``path`` (rewritten atomically when some were not); say what was dropped
    (the first few lines by name, then how many more)."""
    rows, problems = read_results(path, columns, allowed, check)
    if problems:
        for problem in problems[:_NAMED]:
            log.warning("%s: dropped, that image will be certified again", problem)
        if len(problems) > _NAMED:
            log.warning("%s: %d more lines dropped likewise; those images will be certified again", Path(path).name,
                        len(problems) - _NAMED)
        write_atomic(path, format_rows(columns, rows))
    return rows


_NAMED = 5  # dropped lines named one by one in the log


def file_columns(path: Path) -> tuple[str, ...] | None:
    """The header of an existing result file (None when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    return tuple(header.rstrip("\n").split("\t")) if header.endswith("\n") else None


def format_rows(columns: Sequence[str], rows: dict[int, list[str]]) -> str:
    return "\t".join(columns) + "\n" + "".join("\t".join(rows[i]) + "\n" for i in sorted(rows))


# -------------------------------------------------------------------------------------------------- lock
class OutputLock:
    """An exclusive lock on a run's output (``FILE.tsv.lock``), released when the run ends or dies.

    ``flock`` locks vanish with the process, so a killed run never leaves a stale lock; a second run
    on the same output is refused with the holder's pid, host, start time and command.
    """

    def __init__(self, out: Path) -> None:
        self.path = Path(str(out) + ".lock")
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns None, or why it is held by another run (nothing is taken then)."""
        refuse_links(self.path)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
                os.close(fd)
                return (f"{self.path.name[:-5]} is being written by another run ({holder}); wait for it to "
                        f"finish or choose another --out")
            try:  # the file may have been removed by a holder that just finished: lock the live one
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}: {redact(' '.join(sys.argv))}".encode())
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None
