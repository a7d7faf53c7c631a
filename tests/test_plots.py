"""certify/plots.py, the curves of a report: drawn at the exact accuracies (steps at the certified radii), every
pipeline visible where two coincide (another marker, a wider line below), a line style per sigma, and the legend
beside the axes, covering no curve."""

from __future__ import annotations

import matplotlib
import numpy as np

from certify.outcomes import RunResult
from certify.plots import curves_figure, draw_curves

matplotlib.use("Agg")


def _run(name, radius, correct, sigma=0.25):
    n = len(radius)
    return RunResult(name, np.array(radius, float), np.array(correct), np.zeros(n, int), np.zeros(n), np.zeros(n),
                     {"settings": {"sigma": sigma}})


def test_curves_are_drawn_at_exact_values_with_the_legend_outside():
    ninety = _run("ninety", [0.2] * 9 + [0.0], [1] * 9 + [0])  # 90% up to r = 0.2, then 0%
    twin = _run("twin", [0.2] * 9 + [0.0], [1] * 9 + [0])      # the very same curve
    other = _run("other", [0.5, 0.1], [1, 1], sigma=0.5)
    fig = curves_figure([ninety, twin, other], max_radius=1.0)
    ax = fig.axes[0]
    lines = ax.get_lines()
    for line, run in zip(lines, (ninety, twin, other)):
        x, y = line.get_xdata(), line.get_ydata()
        assert list(y) == [100 * run.certified_accuracy(r) for r in x]  # exact, no nudge
        assert line.get_drawstyle() == "steps-pre" and set(run.radius[run.correct == 1]) <= set(x)  # steps there
    assert max(lines[0].get_ydata()) == 90.0 and min(lines[0].get_ydata()) == 0.0
    assert list(lines[0].get_ydata()) == list(lines[1].get_ydata())
    assert lines[0].get_marker() != lines[1].get_marker() and lines[0].get_markevery() != lines[1].get_markevery()
    assert lines[0].get_linewidth() > lines[1].get_linewidth()  # the one below shows around the one on top
    assert ax.get_ylim()[0] == 0 and 100 <= ax.get_ylim()[1] <= 105
    fig.canvas.draw()
    legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= box.x1  # beside the axes, covering no curve



def test_the_plot_keeps_every_pipeline_visible():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def run(name, sigma):
        r = np.array([0.3, 0.6])
        return RunResult(name, r, np.ones(2, int), np.zeros(2, int), np.zeros(2), np.zeros(2),
                         {"settings": {"sigma": sigma}})

    fig, ax = plt.subplots()
    draw_curves(ax, [run("a", 0.25), run("b", 0.25), run("c", 0.5)], np.linspace(0, 1, 50))
    a, b, c = ax.get_lines()
    assert np.array_equal(a.get_ydata(), b.get_ydata())  # identical results drawn where they are (issue 25) ...
    assert a.get_marker() != b.get_marker() and a.get_markevery() != b.get_markevery()  # ... both visible
    assert a.get_linestyle() == b.get_linestyle() != c.get_linestyle()  # a style per sigma
    assert max(max(line.get_ydata()) for line in (a, b, c)) == 100
    plt.close(fig)

