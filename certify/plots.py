"""Accuracy-against-radius curves for reports (headless matplotlib): certified runs, attacks beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .analysis import RunResult, pair


def plot_curves(results: Sequence[RunResult], path: Path, max_radius: float | None = None,
                attacks: Sequence[RunResult] = ()) -> Path:
    """Certified accuracy against radius, one line per run (headless); attack runs as dotted lines with
    crosses at the attacked radii, in the colour of the certification run of the same pipeline.

    Every run stays visible: one line style per sigma, one colour and marker per run, markers staggered
    along the curve, curves that coincide nudged apart by a fraction of a percent, and headroom above 100%.
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
                linewidth=1.4, label=f"{att.name}: not broken by SmoothAdv")
    ax.set_xlabel("L2 radius (pixels in [0,1])")
    ax.set_ylabel("certified accuracy (%)" if not attacks else "accuracy (%): certified; dotted: under attack")
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
                color=f"C{k % 10}",
                marker=markers[k % len(markers)], markersize=4, markevery=(3 * k % 25, 25), label=label)
