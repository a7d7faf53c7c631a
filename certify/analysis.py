"""Reports from result TSVs: loading them (ours, Cohen's), attack runs beside certified ones, and
``analyze``, which writes the tables (`certify.tables`), the curves (`certify.plots`) and, if asked, a
grid of noisy and denoised samples (`certify.samples`) into a folder, never through a symbolic link.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .betting import anytime_radius
from .lines import check_line
from .results import read_manifest, refuse_links, write_atomic
from .stats import max_radius
from .tables import (csv_text, default_radii, envelope_note, high_probability_table, latex_table, markdown_table,
                     per_image_table, predictions_table, summarize)

#: every file a report may write into its folder, each through `certify.results.write_atomic` (a temporary
#: file renamed into place: a link planted there is replaced, never written through)
REPORT_FILES = ("table.md", "table.csv", "table.tex", "per_image.csv", "high_probability.md", "predictions.md", "empirical.md",
                "curves.png", "samples.png", "README.md")


@dataclass
class RunResult:
    """The columns of one result file that analysis needs, plus its manifest.

    ``mode`` is ``predict`` for PREDICT runs (no radius: they go to the predictions table, never
    into certified accuracy) and the run's mode otherwise (``certify`` for Cohen's own files).
    """

    name: str
    radius: np.ndarray
    correct: np.ndarray
    predict: np.ndarray
    time: np.ndarray
    samples: np.ndarray
    manifest: dict
    mode: str = "certify"
    idx: np.ndarray | None = None
    label: np.ndarray | None = None
    eps: tuple[float, ...] = ()                # attack runs: the radii attacked
    adversarial: np.ndarray | None = None     # attack runs: PREDICT at each eps's point, (images, len(eps))
    source: list[str] | None = None           # each image's file or dataset id, where the TSV says

    @property
    def m(self) -> int:
        return len(self.radius)

    @property
    def alpha(self) -> float:
        return float(self.manifest.get("settings", {}).get("alpha", 0.001))

    @property
    def sigma(self) -> float | None:
        return self.manifest.get("settings", {}).get("sigma")

    def certified_accuracy(self, r: float) -> float:
        return float(np.mean((self.correct == 1) & (self.radius >= r))) if self.m else float("nan")

    def acr(self) -> float:
        return float(np.mean(self.radius * self.correct)) if self.m else float("nan")

    def abstain_rate(self) -> float:
        return float(np.mean(self.predict == -1)) if self.m else float("nan")

    def robust_accuracy(self, eps: float, strict: bool = False) -> float:
        """Attack runs, the upper bound: the fraction of images the attack did not break at ``eps`` (PREDICT
        at the clean image and at the point found for ``eps`` returned no class other than the label).

        ``strict``: Salman et al.'s count instead, PREDICT returned the label (an abstention is an error).
        NaN for a radius that was not attacked.
        """
        if not self.m or (eps != 0 and eps not in self.eps):
            return float("nan")
        answers = self.predict if eps == 0 else self.adversarial[:, self.eps.index(eps)]
        ok = answers == self.label
        return float(np.mean(ok if strict else ok | (answers == -1)))

    def decided_radii(self) -> tuple[float, ...]:
        """Sequential mode: the radii the run decided (from its manifest); () otherwise."""
        try:
            return tuple(sorted({float(r) for r in self.manifest["settings"]["options"]["radii"]}))
        except (KeyError, TypeError, ValueError):
            return ()

    def certifiable(self) -> float:
        """The largest radius this run could certify: all n samples agreeing at its sigma, alpha and bound
        (`certify.stats.max_radius`, or the anytime bound's), its largest radius in sequential mode; a
        file without a manifest (Cohen's) says only what it holds, the largest radius in it.

        >>> run = RunResult("r", np.zeros(0), *[np.zeros(0)] * 4, {"settings": {"sigma": 0.25, "n": 100, "alpha": 0.001}})
        >>> round(run.certifiable(), 3)
        0.375
        """
        s = self.manifest.get("settings") or {}
        try:
            if s.get("mode") == "sequential":
                return max(self.decided_radii())
            level = float(s["alpha"]) / (2 if (s.get("options") or {}).get("bound") == "two-class" else 1)
            if s.get("mode") == "anytime":
                return anytime_radius(int(s["n"]), int(s["n"]), float(s["sigma"]), level)
            return max_radius(float(s["sigma"]), int(s["n"]), level)
        except (KeyError, TypeError, ValueError):
            return float(self.radius.max()) if self.m else 0.0

    def image_set(self) -> tuple:
        """Which images the run certified (dataset, its options, indices): envelopes combine only equal ones."""
        s = self.manifest.get("settings") or {}
        return (s.get("dataset"), repr((s.get("options") or {}).get("dataset_kwargs")),
                tuple(sorted(set(self.idx.tolist()))) if self.idx is not None else ())

    def identity(self) -> tuple:
        """What makes two runs the same smoothed classifier g (the pipeline, sigma and data), for pairing."""
        s = self.manifest.get("settings", {})
        options = s.get("options", {})
        return (s.get("classifier"), s.get("denoiser"), s.get("sigma"), s.get("dataset"),
                *(repr(options.get(k)) for k in ("classifier_kwargs", "denoiser_kwargs", "dataset_kwargs")))


def _seconds(text: str) -> float:
    """A time cell: seconds (ours) or ``H:MM:SS[.ffffff]`` (str of a timedelta, Cohen's certify.py).

    >>> _seconds("0.25"), _seconds("0:00:01.162000"), _seconds("1:02:03")
    (0.25, 1.162, 3723.0)
    """
    if ":" not in text:
        return float(text)
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def load_result(path: str | os.PathLike, name: str | None = None) -> RunResult:
    """Read a result TSV (ours, or Cohen's six columns) and the manifest beside it, if any.

    A file with a repeated idx (two runs wrote into it) is refused; an abstention or an unknown label
    (-1) is never counted as correct, whatever the file says.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"result file {str(path)!r} does not exist")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    manifest = read_manifest(path) or {}
    _check_lines(path, rows, manifest.get("settings"))
    columns = set(rows[0]) if rows else set()
    mode = manifest.get("settings", {}).get("mode", "certify")
    if rows and "radius" not in columns:
        mode = "attack" if "adv_predict" in columns else "predict"
    needed = {"idx", "label", "predict", "correct"} | ({"radius"} if mode not in ("predict", "attack") else set())
    if rows and needed - columns:
        raise ValueError(f"{path} lacks the columns {sorted(needed - columns)}; expected a certify or predict TSV")
    try:
        idx = [int(r["idx"]) for r in rows]
        col = lambda key: np.array([float(r.get(key) or 0.0) for r in rows], dtype=float)
        times = np.array([_seconds(r.get("time") or "0") for r in rows], dtype=float)
        label, predict = col("label").astype(int), col("predict").astype(int)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} has a malformed line ({exc}); expected numbers in every column") from None
    repeated = sorted({i for i in idx if idx.count(i) > 1})
    if repeated:
        raise ValueError(f"{path} holds idx {repeated[:5]} more than once (two runs wrote into it?); "
                         f"certify again into a fresh --out")
    correct = col("correct").astype(int) * (label >= 0) * (predict >= 0)
    if "n" in columns:
        samples = col("n") + (col("n0") if "n0" in columns else 0.0)
    else:
        samples = np.full(len(rows), np.nan)  # Cohen's files do not say
    radius = col("radius") if mode not in ("predict", "attack") else np.zeros(len(rows))
    eps, adversarial = (), None
    if mode == "attack":
        eps, adversarial = _attack_columns(path, rows, manifest)
    return RunResult(name or path.stem, radius, correct, predict, times, samples, manifest, mode,
                     np.array(idx, dtype=int), label, eps, adversarial,
                     [r["source"] or "" for r in rows] if "source" in columns else None)


def _check_lines(path: Path, rows: list[dict], settings: dict | None) -> None:
    """Refuse a file with a line that does not follow from itself or from its manifest's settings
    (`certify.lines`): a report never counts a false certificate."""
    for number, row in enumerate(rows, start=2):
        try:
            problem = check_line(row, settings)
        except (TypeError, ValueError) as exc:
            problem = f"a malformed cell ({exc})"
        if problem:
            raise ValueError(f"{path} line {number}: {problem}; this file cannot be trusted. Certify again into a "
                             f"fresh --out (or resume: a resumed run drops such lines and certifies those images again)")


def _attack_columns(path: Path, rows: list[dict], manifest: dict) -> tuple[tuple[float, ...], np.ndarray]:
    """The eps grid (the same on every line) and PREDICT's answers per image and eps."""
    grids = {r["eps"] for r in rows}
    if len(grids) > 1:
        raise ValueError(f"{path} mixes eps grids {sorted(grids)}; one attack run has one grid")
    try:
        eps = tuple(float(e) for e in grids.pop().split(",")) if rows else tuple(manifest.get("settings", {}).get(
            "options", {}).get("eps", ()))
        adversarial = np.array([[int(v) for v in r["adv_predict"].split(",")] for r in rows], dtype=int)
    except ValueError as exc:
        raise ValueError(f"{path} has a malformed eps or adv_predict cell ({exc})") from None
    if rows and adversarial.shape[1] != len(eps):
        raise ValueError(f"{path}: {adversarial.shape[1]} answers per line for {len(eps)} radii")
    return eps, adversarial.reshape(len(rows), len(eps))


ATTACK_LEGEND = (
    "Robust accuracy (%) at L2 radius r, from both sides. certified: CERTIFY's certificates (a lower bound). "
    "not broken: the images the SmoothAdv attack did not break, i.e. PREDICT returned no other class than the "
    "label at the clean image and at the attack's point for r (an upper bound; an abstention shows nothing "
    "either way). PREDICT = label: Salman et al.'s stricter count, where an abstention is an error. A "
    "violation is an image certified at radius r that an attack with eps < r broke.")


def violations(certified: RunResult, attack: RunResult) -> list[str]:
    """Images certified at radius r (correct) whose attack with eps < r made PREDICT return another class.

    Each is a contradiction between the certificate and g at level alpha: a wrong certificate, or one of
    the alpha-rare failures of CERTIFY or PREDICT. Only images in both runs are compared.

    >>> import numpy as np
    >>> c = RunResult("c", np.array([0.6]), np.array([1]), np.array([3]), np.zeros(1), np.zeros(1), {}, idx=np.array([7]), label=np.array([3]))
    >>> a = RunResult("a", np.zeros(1), np.array([1]), np.array([3]), np.zeros(1), np.zeros(1), {}, "attack", np.array([7]), np.array([3]), (0.25, 0.5), np.array([[3, 5]]))
    >>> violations(c, a)
    ['image 7 (label 3) certified at radius 0.6 but PREDICT says 5 at eps 0.5']
    """
    radius = {int(i): r for i, r, ok in zip(certified.idx, certified.radius, certified.correct) if ok == 1}
    found = []
    for i, label, answers, source in zip(attack.idx, attack.label, attack.adversarial, attack.source or [""] * attack.m):
        for e, answer in zip(attack.eps, answers):
            if int(i) in radius and e < radius[int(i)] and answer not in (label, -1):
                found.append(f"image {int(i)} (label {int(label)}{', ' + source if source else ''}) certified at "
                             f"radius {radius[int(i)]:g} but PREDICT says {int(answer)} at eps {e:g}")
    return found


def empirical_table(results: Sequence[RunResult], attacks: Sequence[RunResult]) -> tuple[list[str], list[list], list[str]]:
    """Certified and empirical (SmoothAdv) accuracy (%) at each attacked radius, two rows per attack run,
    and the violations found (`violations`); a certified row only where a run of the same g was given."""
    grid = sorted({0.0, *(e for a in attacks for e in a.eps)})
    header = ["run", "curve", "images"] + [f"r={r:g}" for r in grid] + ["violations"]
    rows, found = [], []
    for att in attacks:
        paired = pair(att, results)
        bad = violations(paired, att) if paired is not None else None
        if paired is not None:
            found += [f"{att.name}: {v}" for v in bad]
            rows.append([paired.name, "certified", paired.m] + [round(100 * paired.certified_accuracy(r), 1) for r in grid]
                        + [""])
        rows.append([att.name, "not broken by SmoothAdv (upper bound)", att.m]
                    + [round(100 * att.robust_accuracy(r), 1) for r in grid] + [len(bad) if bad is not None else "not paired"])
        rows.append([att.name, "PREDICT = label there (Salman et al.)", att.m]
                    + [round(100 * att.robust_accuracy(r, strict=True), 1) for r in grid] + [""])
    return header, rows, found


def pair(attack: RunResult, results: Sequence[RunResult]) -> RunResult | None:
    """The certification run of the same smoothed classifier as ``attack`` (by manifest), else by name."""
    same = [r for r in results if r.manifest and r.identity() == attack.identity()]
    if len(same) == 1:
        return same[0]
    named = [r for r in results if attack.name.startswith(r.name)]
    return max(named, key=lambda r: len(r.name)) if named else None


def run_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Row names for result files: their stems, with as many parent folders as it takes to tell them apart.

    >>> run_names(["a/run.tsv", "b/run.tsv", "b/other.tsv"])
    ['a/run', 'b/run', 'other']
    """
    parts = [Path(os.path.abspath(p)).with_suffix("").parts[1:] for p in paths]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashing = [i for i, name in enumerate(names) if names.count(name) > 1]
        growing = [i for i in clashing if depth[i] < len(parts[i])]
        if not clashing:
            return names
        if not growing:
            raise ValueError(f"{str(paths[clashing[0]])!r} is given twice; give each result file once")
        for i in growing:
            depth[i] += 1


def refuse_report_links(out_dir: Path) -> None:
    """A clear error, before anything is written, when a report file in ``out_dir`` is a symbolic link (a link
    inside could send our output anywhere; the folder itself may be one: where a report goes is the user's)."""
    refuse_links(*(Path(out_dir) / name for name in REPORT_FILES))


def analyze(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, radii: Sequence[float] | None = None,
            names: Sequence[str] | None = None, samples: bool = False, device: str | None = None) -> dict:
    """Write ``table.md``, ``table.csv``, ``table.tex``, ``high_probability.md`` and ``curves.png`` for
    result files (``predictions.md`` for PREDICT runs, ``empirical.md`` for attack runs beside their
    certified curves; ``samples.png`` with ``samples``: each run's denoiser rebuilt from its manifest).

    The default grid follows what the runs can certify (`certify.tables.default_radii`); rows are named
    after the files (`run_names`) unless ``names`` are given; no file is written through a link.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.tsv").write_text("idx\\tlabel\\tpredict\\tradius\\tcorrect\\ttime\\n0\\t1\\t1\\t0.6\\t1\\t0.1\\n")
    >>> analyze([d / "a.tsv"], d / "report")["rows"][0][3:5]
    [100.0, 100.0]
    """
    if not paths:
        raise ValueError("analyze needs at least one result TSV")
    if names and len(names) != len(paths):
        raise ValueError(f"--names gives {len(names)} name(s) for {len(paths)} file(s); give one per file")
    if names and len(set(names)) < len(names):
        raise ValueError(f"--names must differ from each other, got {list(names)}")
    if radii is not None and not all(math.isfinite(r) and r >= 0 for r in radii):
        raise ValueError(f"radii must be finite numbers >= 0, got {list(radii)}")
    if samples:
        from .pipeline import default_device

        default_device(device)  # a mistyped --device is one error, before anything is written
    loaded = [load_result(p, n) for p, n in zip(paths, list(names) if names else run_names(paths))]
    results = [r for r in loaded if r.mode not in ("predict", "attack")]
    predictions = [r for r in loaded if r.mode == "predict"]
    attacks = [r for r in loaded if r.mode == "attack"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    refuse_report_links(out_dir)
    summary: dict = dict(header=[], rows=[], out_dir=str(out_dir), predictions=None, attacks=None, note="", samples=None)
    if attacks:
        a_header, a_rows, found = empirical_table(results, attacks)
        verdict = ("\n".join(f"- VIOLATION {v}" for v in found) if found else
                   "No image certified at radius r was broken (PREDICT returned another class) by an attack with eps < r.")
        write_atomic(out_dir / "empirical.md", ATTACK_LEGEND + "\n\n" + markdown_table(a_header, a_rows) + "\n" + verdict + "\n")
        summary["attacks"] = {"header": a_header, "rows": a_rows, "violations": found}
    if predictions:
        p_header, p_rows = predictions_table(predictions)
        write_atomic(out_dir / "predictions.md", "Smoothed predictions (PREDICT: no radius, not certificates)\n\n"
                     + markdown_table(p_header, p_rows))
        summary["predictions"] = {"header": p_header, "rows": p_rows}
    if not results and not attacks:
        return summary
    radii = tuple(radii) if radii else default_radii(results or attacks)
    from .plots import plot_curves

    reach = [*radii, *(e for a in attacks for e in a.eps)]
    plot_curves(results, out_dir / "curves.png", max_radius=max(reach) if reach else None, attacks=attacks)
    if samples:
        from .samples import samples_from_manifests

        summary["samples"] = samples_from_manifests(results, out_dir / "samples.png", device=device)
    if not results:
        return summary
    header, rows = summarize(results, radii)
    note = envelope_note(results)
    write_atomic(out_dir / "table.md", markdown_table(header, rows) + (f"\n{note}\n" if note else ""))
    write_atomic(out_dir / "table.csv", csv_text(header, rows))
    write_atomic(out_dir / "table.tex", latex_table(results, radii))
    write_atomic(out_dir / "per_image.csv", csv_text(*per_image_table(results)))
    write_atomic(out_dir / "high_probability.md", "Certified accuracy (%) that holds with probability >= 99.9% over "
                 "the choice of images\n\n" + markdown_table(*high_probability_table(results, radii)))
    summary.update(header=header, rows=rows, note=note)
    return summary
