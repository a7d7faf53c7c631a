"""What runs found, read back: a result TSV (ours, or Cohen's six columns) and its manifest as a `RunResult`,
every line checked against its run's settings (`certify.modes.check_line`); an attack run paired with the
certification of the same smoothed classifier, and the images where they contradict each other. The reports
(`certify.tables`, `certify.plots`, `certify.samples`, `certify.analysis`) are built on these.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .betting import anytime_radius
from .modes import check_line
from .results import read_manifest, read_table
from .stats import max_radius


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
        return (s.get("classifier"), s.get("denoiser"), s.get("sigma"), s.get("dataset"), options.get("votes") or 1,
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
    header, rows = read_table(path)
    manifest = read_manifest(path) or {}
    columns = set(header)
    mode = manifest.get("settings", {}).get("mode", "certify")
    if "radius" not in columns and "label" in columns:
        mode = "attack" if "adv_predict" in columns else "predict"
    needed = {"idx", "label", "predict", "correct"} | ({"radius"} if mode not in ("predict", "attack") else set())
    if needed - columns:  # junk, an empty file or another table: never a report of nothing
        raise ValueError(f"{path} lacks the columns {sorted(needed - columns)}; expected a certify or predict TSV")
    _check_lines(path, rows, manifest.get("settings"))
    try:
        idx = [int(r["idx"]) for r in rows]
        col = lambda key: np.array([float(r.get(key) or 0.0) for r in rows], dtype=float)
        times = np.array([_seconds(r.get("time") or "0") for r in rows], dtype=float)
        label, predict, correct = col("label").astype(int), col("predict").astype(int), col("correct").astype(int)
        samples = (col("n") + (col("n0") if "n0" in columns else 0.0) if "n" in columns
                   else np.full(len(rows), np.nan))  # Cohen's files do not say
        radius = col("radius") if mode not in ("predict", "attack") else np.zeros(len(rows))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} has a malformed line ({exc}); expected numbers in every column") from None
    repeated = sorted({i for i in idx if idx.count(i) > 1})
    if repeated:
        raise ValueError(f"{path} holds idx {repeated[:5]} more than once (two runs wrote into it?); "
                         f"certify again into a fresh --out")
    correct = correct * (label >= 0) * (predict >= 0)
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


def pair(attack: RunResult, results: Sequence[RunResult]) -> RunResult | None:
    """The certification run of the same smoothed classifier as ``attack`` (by manifest); among several such, or
    where a file has no manifest, the longest name the attack's name begins with. Never a run whose manifest
    says it is another g (another sigma, pipeline, dataset or vote): its radii say nothing of this attack."""
    described = [r for r in results if r.manifest.get("settings")] if attack.manifest.get("settings") else []
    same = [r for r in described if r.identity() == attack.identity()]
    if len(same) == 1:
        return same[0]
    eligible = same or [r for r in results if all(r is not d for d in described)]
    named = [r for r in eligible if attack.name.startswith(r.name)]
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


__all__ = ["RunResult", "load_result", "pair", "run_names", "violations"]
