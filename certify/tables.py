"""The tables of a report, from loaded runs (`certify.outcomes.RunResult`): the radius grid, certified
accuracy per run and the envelope over runs on the same images, the high-probability bound, PREDICT
runs, one row per image (with where it came from), and the same numbers as Markdown or as a LaTeX tabular.

Certified accuracy at r is the fraction of images with ``correct == 1`` and ``radius >= r``; at
r = 0 it is the smoothed classifier's clean accuracy. ACR = mean(radius * correct). The
high-probability variant subtracts alpha and a Bernstein term for the finite number of images
(REFERENCE.md section 1), rho = 0.001.
"""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from .outcomes import RunResult

#: the steps of a default radius grid: 1, 2, 2.5 and 5 times a power of ten
GRID_STEPS = tuple(m * 10.0 ** e for e in range(-3, 3) for m in (1, 2, 2.5, 5))
ENVELOPE = "envelope (best per radius)"


def default_radii(results: Sequence[RunResult], most: int = 8) -> tuple[float, ...]:
    """The radius grid when none is given: what the runs can certify, not a paper's fixed grid.

    0, then round steps (1, 2, 2.5 or 5 x 10^k; 5 to ``most`` columns) up to the largest radius any run
    can certify (`RunResult.certifiable`); when every run decided preset radii (sequential mode), 0 and
    those radii.

    >>> from certify.outcomes import RunResult
    >>> run = RunResult("r", np.zeros(0), *[np.zeros(0)] * 4, {"settings": {"sigma": 0.25, "n": 100, "alpha": 0.001}})
    >>> default_radii([run])   # nothing above 0.375 can be certified with n = 100
    (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35)
    """
    runs = [r for r in results if r.mode not in ("predict", "attack")]
    if runs and all(r.mode == "sequential" and r.decided_radii() for r in runs):
        return (0.0, *sorted({x for r in runs for x in r.decided_radii()}))
    top = max((r.certifiable() for r in runs), default=0.0)
    if not (math.isfinite(top) and top > 0):
        return (0.0,)
    step = next((s for s in GRID_STEPS if math.floor(top / s + 1e-9) < most), GRID_STEPS[-1])
    return tuple(round(k * step, 10) for k in range(min(math.floor(top / step + 1e-9), most - 1) + 1))


def image_sets(results: Sequence[RunResult]) -> list[list[RunResult]]:
    """The runs grouped by the images they certified (`RunResult.image_set`), in order of appearance."""
    groups: dict[tuple, list[RunResult]] = {}
    for res in results:
        groups.setdefault(res.image_set(), []).append(res)
    return list(groups.values())


def envelope_note(results: Sequence[RunResult]) -> str:
    """What the envelope rows combine when the runs were not all certified on the same images ('' when they were)."""
    sets = image_sets(results)
    if len(sets) < 2:
        return ""
    described = [f"image set {k + 1} = {(group[0].manifest.get('settings') or {}).get('dataset') or 'no manifest'}, "
                 f"{group[0].m} images ({', '.join(r.name for r in group)})" for k, group in enumerate(sets)]
    return ("These runs were certified on different images, so no envelope combines them all: an envelope (best "
            "per radius) is taken only over runs on the same images (same dataset and indices), one per image set "
            "of two or more runs. " + "; ".join(described) + ".")


def summarize(results: Sequence[RunResult], radii: Sequence[float]) -> tuple[list[str], list[list]]:
    """One row per run, then the envelope (best per radius) of each image set of two or more runs
    (`envelope_note`): certified accuracy (%) per radius, ACR, abstain %, s/img, samples/img."""
    header = ["run", "sigma", "images"] + [f"r={r:g}" for r in radii] + ["ACR", "abstain %", "s/img", "samples/img"]
    rows = []
    for res in results:
        rows.append([res.name, res.sigma, res.m] + [round(100 * res.certified_accuracy(r), 1) for r in radii]
                    + [round(res.acr(), 3), round(100 * res.abstain_rate(), 1),
                       round(float(np.mean(res.time)), 3) if res.m else float("nan"),
                       mean_samples(res.samples)])
    sets = image_sets(results)
    for k, group in enumerate(sets):  # only runs on the same images are comparable cell by cell
        if len(group) > 1:
            name = ENVELOPE if len(sets) == 1 else f"envelope of image set {k + 1} (best per radius)"
            rows.append([name, "", ""] + [max(round(100 * res.certified_accuracy(r), 1) for res in group)
                                          for r in radii] + ["", "", "", ""])
    return header, rows


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


def high_probability_table(results: Sequence[RunResult], radii: Sequence[float]) -> tuple[list[str], list[list]]:
    """`high_probability` of each run's certified accuracy (%) at ``radii``."""
    header = ["run", "images", "alpha"] + [f"r={r:g}" for r in radii]
    return header, [[res.name, res.m, res.alpha] + [round(100 * high_probability(res.certified_accuracy(r), res.m,
                                                                                    res.alpha), 1) for r in radii]
                    for res in results]


def predictions_table(runs: Sequence[RunResult]) -> tuple[list[str], list[list]]:
    """PREDICT runs: accuracy and abstentions (no radius: these are not certificates)."""
    header = ["run", "sigma", "images", "accuracy %", "abstain %", "s/img", "samples/img"]
    return header, [[r.name, r.sigma, r.m, round(100 * float(np.mean(r.correct)), 1) if r.m else float("nan"),
                     round(100 * r.abstain_rate(), 1), round(float(np.mean(r.time)), 3) if r.m else float("nan"),
                     mean_samples(r.samples)] for r in runs]


def per_image_table(runs: Sequence[RunResult]) -> tuple[list[str], list[list]]:
    """One row per image of any run: idx, label, where it came from (the ``source`` column, when the files
    have it), then each run's prediction and radius (empty where a run did not certify that image).

    >>> from certify.outcomes import RunResult
    >>> a = RunResult("a", np.array([0.5]), np.array([1]), np.array([3]), np.zeros(1), np.zeros(1), {},
    ...               idx=np.array([7]), label=np.array([3]), source=["3/x.png"])
    >>> per_image_table([a])
    (['idx', 'label', 'source', 'a predict', 'a radius'], [[7, 3, '3/x.png', 3, 0.5]])
    """
    header = ["idx", "label", "source"] + [f"{r.name} {what}" for r in runs for what in ("predict", "radius")]
    images: dict[int, list] = {}
    for r in runs:
        for k, i in enumerate(r.idx):
            row = images.setdefault(int(i), [int(i), int(r.label[k]), ""])
            row[2] = row[2] or (r.source[k] if r.source is not None else "")
    rows = []
    for i in sorted(images):
        cells = list(images[i])
        for r in runs:
            at = np.flatnonzero(r.idx == i)
            cells += [int(r.predict[at[0]]), float(r.radius[at[0]])] if at.size else ["", ""]
        rows.append(cells)
    return header, rows


def csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A table as CSV text (header first)."""
    out = io.StringIO()
    csv.writer(out).writerows([header, *rows])
    return out.getvalue()


def mean_samples(values: np.ndarray) -> float:
    """The mean number of samples per image, rounded; NaN when a file does not say (Cohen's)."""
    return round(float(np.mean(values))) if len(values) and not np.isnan(values).any() else float("nan")


def _fmt(value, missing: str = "") -> str:
    if isinstance(value, float):
        return missing if math.isnan(value) else f"{value:g}"
    return missing if value is None else str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_LATEX = {**{c: "\\" + c for c in "&%$#_{}"}, "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "\\": r"\textbackslash{}"}


def latex_table(results: Sequence[RunResult], radii: Sequence[float]) -> str:
    """Certified accuracy (%) at ``radii`` as a LaTeX tabular in the layout of Cohen et al.'s analysis script
    (locuslab/smoothing, ``code/analyze.py``, ``latex_table_certified_accuracy``): a header of radii, one
    ``&``-separated row per run ending in ``\\\\``, the best value per radius in bold among runs on the
    same images. Needs no package (``\\hline``, not booktabs' ``\\midrule``).

    >>> from certify.outcomes import RunResult
    >>> runs = [RunResult(name, np.array(r), np.array([1, 1]), np.ones(2), np.zeros(2), np.zeros(2), {})
    ...         for name, r in (("dncnn_mse", [0.6, 0.2]), ("alone", [0.3, 0.0]))]
    >>> print(latex_table(runs, [0, 0.25, 0.5]), end="")
    % certified accuracy (%) at L2 radius r; best per radius in bold (among runs on the same images)
    \\begin{tabular}{lccc}
     & $r = 0$ & $r = 0.25$ & $r = 0.5$ \\\\
    \\hline
    dncnn\\_mse & \\textbf{100} & \\textbf{50} & \\textbf{50} \\\\
    alone & \\textbf{100} & \\textbf{50} & 0 \\\\
    \\end{tabular}
    """
    accuracy = {id(res): [round(100 * res.certified_accuracy(r), 1) for r in radii] for res in results}
    best: dict[int, list[float | None]] = {}
    for group in image_sets(results):
        top = [max(accuracy[id(res)][j] for res in group) if len(group) > 1 else None for j in range(len(radii))]
        best.update({id(res): top for res in group})
    lines = ["% certified accuracy (%) at L2 radius r; best per radius in bold (among runs on the same images)",
             "\\begin{tabular}{l" + "c" * len(radii) + "}",
             "".join(f" & $r = {r:g}$" for r in radii) + " \\\\", "\\hline"]
    for res in results:
        cells = [f"\\textbf{{{_fmt(v)}}}" if v == b else _fmt(v, "--") for v, b in zip(accuracy[id(res)], best[id(res)])]
        lines.append("".join(_LATEX.get(c, c) for c in res.name) + "".join(f" & {c}" for c in cells) + " \\\\")
    return "\n".join(lines + ["\\end{tabular}"]) + "\n"
