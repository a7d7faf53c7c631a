"""Tables and curves from result TSVs: certified accuracy, ACR, abstain rate, the sigma envelope.

Certified accuracy at r is the fraction of images with ``correct == 1`` and ``radius >= r``; at
r = 0 it is the smoothed classifier's clean accuracy. ACR = mean(radius * correct). The
high-probability variant subtracts alpha and a Bernstein term for the finite number of images
(REFERENCE.md section 1), rho = 0.001.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .results import read_manifest

CIFAR_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
IMAGENET_RADII = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


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
        rows = list(csv.DictReader(fh, delimiter="\t"))
    manifest = read_manifest(path) or {}
    columns = set(rows[0]) if rows else set()
    mode = "predict" if rows and "radius" not in columns else manifest.get("settings", {}).get("mode", "certify")
    needed = {"idx", "label", "predict", "correct"} | ({"radius"} if mode != "predict" else set())
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
    radius = col("radius") if mode != "predict" else np.zeros(len(rows))
    return RunResult(name or path.stem, radius, correct, predict, times, samples, manifest, mode)


def default_radii(results: Sequence[RunResult]) -> tuple[float, ...]:
    """The papers' grid: ImageNet 0..3 step 0.5, otherwise (CIFAR-10, MNIST) 0..1.5 step 0.25."""
    datasets = " ".join(str(r.manifest.get("settings", {}).get("dataset", "")) for r in results).lower()
    return IMAGENET_RADII if "imagenet" in datasets else CIFAR_RADII


def high_probability(acc: float, m: int, alpha: float, rho: float = 0.001) -> float:
    """A lower bound on the true certified accuracy that holds with probability >= 1 - rho.

    REFERENCE section 1's bound, clipped at 0 (a negative lower bound on a rate says nothing more).

    >>> round(high_probability(0.5, 500, 0.001), 4)
    0.4907
    >>> high_probability(0.05, 20, 0.001)   # 20 images cannot vouch for 5%
    0.0
    """
    if m == 0:
        return float("nan")
    log_term = math.log(1.0 / rho)
    return max(0.0, acc - alpha - math.sqrt(alpha * (1 - alpha) * log_term / m) - log_term / (3 * m))


def summarize(results: Sequence[RunResult], radii: Sequence[float]) -> tuple[list[str], list[list]]:
    """One row per run plus the envelope row: certified accuracy (%) per radius, ACR, abstain, s/img."""
    header = ["run", "sigma", "images"] + [f"r={r:g}" for r in radii] + ["ACR", "abstain %", "s/img", "samples/img"]
    rows = []
    for res in results:
        rows.append([res.name, res.sigma, res.m] + [round(100 * res.certified_accuracy(r), 1) for r in radii]
                    + [round(res.acr(), 3), round(100 * res.abstain_rate(), 1),
                       round(float(np.mean(res.time)), 3) if res.m else float("nan"),
                       _mean(res.samples)])
    if len(results) > 1:
        env = [max(round(100 * res.certified_accuracy(r), 1) for res in results) for r in radii]
        rows.append(["envelope (best per radius)", "", ""] + env + ["", "", "", ""])
    return header, rows


def _mean(values: np.ndarray) -> float:
    return round(float(np.mean(values))) if len(values) and not np.isnan(values).any() else float("nan")


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:g}"
    return "" if value is None else str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_curves(results: Sequence[RunResult], path: Path, max_radius: float | None = None) -> Path:
    """Certified accuracy against radius, one line per run (headless).

    Every run stays visible: one line style per sigma, one colour and marker per run, markers staggered
    along the curve, curves that coincide nudged apart by a fraction of a percent, and headroom above 100%.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max_radius or max([float(r.radius.max()) for r in results if r.m] + [0.5]) * 1.05
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    draw_curves(ax, results, np.linspace(0, top, 300))
    ax.set_xlabel("L2 radius (pixels in [0,1])")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(-3, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_curves(ax, results: Sequence[RunResult], grid: np.ndarray) -> None:
    """One visible line per run on ``ax``: line style by sigma, colour and staggered marker by run."""
    sigmas = sorted({r.sigma for r in results if r.sigma is not None})
    styles = ["-", "--", ":", "-."]
    markers = "osD^v<>ph*"
    for k, res in enumerate(results):
        nudge = 0.6 * (k - (len(results) - 1) / 2)  # percentage points: coinciding curves side by side
        style = styles[sigmas.index(res.sigma) % len(styles)] if res.sigma in sigmas else "-"
        label = res.name if res.sigma is None or f"{res.sigma:g}" in res.name else f"{res.name} (sigma={res.sigma:g})"
        ax.plot(grid, [100 * res.certified_accuracy(r) + nudge for r in grid], linestyle=style, linewidth=1.6,
                marker=markers[k % len(markers)], markersize=4, markevery=(3 * k % 25, 25), label=label)


def analyze(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, radii: Sequence[float] | None = None,
            names: Sequence[str] | None = None) -> dict:
    """Write ``table.md``, ``table.csv``, ``high_probability.md`` and ``curves.png`` for result files.

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
    names = list(names) if names else [Path(p).stem for p in paths]
    loaded = [load_result(p, n) for p, n in zip(paths, names)]
    results = [r for r in loaded if r.mode != "predict"]
    predictions = [r for r in loaded if r.mode == "predict"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"header": [], "rows": [], "out_dir": str(out_dir), "predictions": None}
    if predictions:
        p_header = ["run", "sigma", "images", "accuracy %", "abstain %", "s/img", "samples/img"]
        p_rows = [[r.name, r.sigma, r.m, round(100 * float(np.mean(r.correct)), 1) if r.m else float("nan"),
                   round(100 * r.abstain_rate(), 1), round(float(np.mean(r.time)), 3) if r.m else float("nan"),
                   _mean(r.samples)] for r in predictions]
        (out_dir / "predictions.md").write_text(
            "Smoothed predictions (PREDICT: no radius, not certificates)\n\n" + markdown_table(p_header, p_rows))
        summary["predictions"] = {"header": p_header, "rows": p_rows}
    if not results:
        return summary
    radii = tuple(radii) if radii else default_radii(results)
    if any(r < 0 for r in radii):
        raise ValueError(f"radii must be >= 0, got {list(radii)}")
    header, rows = summarize(results, radii)
    (out_dir / "table.md").write_text(markdown_table(header, rows))
    with open(out_dir / "table.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    hp_header = ["run", "images", "alpha"] + [f"r={r:g}" for r in radii]
    hp_rows = [[res.name, res.m, res.alpha] + [round(100 * high_probability(res.certified_accuracy(r), res.m, res.alpha), 1)
                                                for r in radii] for res in results]
    (out_dir / "high_probability.md").write_text(
        "Certified accuracy (%) that holds with probability >= 99.9% over the choice of images\n\n"
        + markdown_table(hp_header, hp_rows))
    plot_curves(results, out_dir / "curves.png", max_radius=max(radii) if radii else None)
    summary.update(header=header, rows=rows)
    return summary
