"""Accuracy-against-radius curves for reports (headless matplotlib): certified runs, attacks beside them.

Every value is drawn where it is: certified accuracy is a step function of the radius, drawn as steps
through its exact values at every radius where it changes (no offsets, nothing below 0 or above 100).
Runs whose curves coincide stay visible by their markers, placed at different points of each curve, and
by their line widths (earlier runs wider, underneath). The legend sits outside the axes, hiding nothing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .outcomes import RunResult, pair
from .results import write_atomic


def save_png(fig, path: str | Path, dpi: int = 120) -> Path:
    """``fig`` as a PNG at ``path`` (written atomically, never through a symbolic link), then closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    write_atomic(Path(path), buffer.getvalue())
    return Path(path)


def plot_curves(results: Sequence[RunResult], path: Path, max_radius: float | None = None,
                attacks: Sequence[RunResult] = ()) -> Path:
    """`curves_figure` saved as a PNG at ``path``."""
    return save_png(curves_figure(results, max_radius, attacks), path)


def curves_figure(results: Sequence[RunResult], max_radius: float | None = None, attacks: Sequence[RunResult] = ()):
    """Certified accuracy against radius, one line per run; attack runs as dotted lines with crosses at the
    attacked radii, in the colour of the certification run of the same pipeline. Returns the figure.

    >>> run = RunResult("a", np.array([0.3, 0.6]), np.array([1, 0]), np.zeros(2), np.zeros(2), np.zeros(2), {})
    >>> line = curves_figure([run], max_radius=1.0).axes[0].get_lines()[0]
    >>> sorted(set(line.get_ydata().tolist()))   # exact: one of two images certified up to 0.3, none beyond
    [0.0, 50.0]
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max_radius or max([float(r.radius.max()) for r in results if r.m] + [0.5]) * 1.05
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    draw_curves(ax, results, np.linspace(0, top, 300))
    for k, att in enumerate(attacks):
        paired = pair(att, results)
        color = f"C{results.index(paired) % 10}" if paired is not None else f"C{(len(results) + k) % 10}"
        grid = [0.0, *att.eps]
        ax.plot(grid, [100 * att.robust_accuracy(e) for e in grid], linestyle=":", marker="x", color=color,
                linewidth=1.4, clip_on=False, label=f"{att.name}: not broken by SmoothAdv")
    ax.set_xlabel("L2 radius (pixels in [0,1])")
    ax.set_ylabel("certified accuracy (%)" if not attacks else "accuracy (%): certified; dotted: under attack")
    ax.set_xlim(0, top)
    ax.set_ylim(0, 102)  # 0..100 and a little room above for a line at 100; lines at 0 drawn unclipped
    ax.set_yticks(range(0, 101, 20))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def certified_steps(res: RunResult, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(radii, certified accuracy in %) at the points of ``grid`` and at every certified radius inside it,
    where the curve jumps: drawn with ``drawstyle="steps-pre"`` this is the exact step function.

    >>> run = RunResult("a", np.array([0.25, 0.6]), np.array([1, 1]), np.zeros(2), np.zeros(2), np.zeros(2), {})
    >>> x, y = certified_steps(run, np.array([0.0, 0.5, 1.0]))
    >>> x.tolist(), y.tolist()
    ([0.0, 0.25, 0.5, 0.6, 1.0], [100.0, 100.0, 50.0, 50.0, 0.0])
    """
    certified = np.sort(res.radius[res.correct == 1])
    x = np.union1d(grid, certified[certified <= grid[-1]])
    if not res.m:
        return x, np.full(len(x), np.nan)
    return x, 100 * ((len(certified) - np.searchsorted(certified, x, side="left")) / res.m)


def draw_curves(ax, results: Sequence[RunResult], grid: np.ndarray) -> None:
    """One line per run on ``ax`` at its exact values (`certified_steps`): line style by sigma, a colour
    and a marker per run, the markers of different runs at different points, earlier runs drawn wider."""
    sigmas = sorted({r.sigma for r in results if r.sigma is not None})
    styles = ["-", "--", ":", "-."]
    markers = "osD^v<>ph*"
    for k, res in enumerate(results):
        x, y = certified_steps(res, grid)
        every = max(len(x) // 10, len(results))
        style = styles[sigmas.index(res.sigma) % len(styles)] if res.sigma in sigmas else "-"
        label = res.name if res.sigma is None or f"{res.sigma:g}" in res.name else f"{res.name} (sigma={res.sigma:g})"
        ax.plot(x, y, drawstyle="steps-pre", linestyle=style, color=f"C{k % 10}", clip_on=False,
                linewidth=1.2 + 1.6 * (len(results) - 1 - k) / max(len(results) - 1, 1),
                marker=markers[k % len(markers)], markersize=4, markevery=(every * k // len(results), every),
                label=label)
