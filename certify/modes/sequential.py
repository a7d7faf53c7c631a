"""``sequential``: decide each radius of a grid with an anytime-valid test, stopping as soon as every radius is
decided (`certify.sequential.certify_at_stream`; Voracek's betting test, the exact boundary, futility, every
class tested). ``n`` is the most test samples an image may use. The guarantee is Cohen's: a wrong claim for any
radius of the grid has probability <= alpha.

Images are packed: each image draws, at each check of its schedule, what it would draw alone; the chunks of
many images in flight fill each forward pass.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..boundary import BOUNDARIES
from ..betting import MIXTURES
from ..lines import check_counts, check_radius, check_reachable
from ..schema import NUMBERS, Option, number
from ..selection import SELECTIONS
from ..sequential import GridCertificate, certify_at_stream
from . import GROWTH, STEP, Mode, check_step, register_mode, split
from .certify import COLUMNS, certificate_cells

#: the boundary unless told otherwise: "exact" lowers the later thresholds until the exact probability of a
#: wrong certificate on the schedule is alpha (`certify.boundary`); "ville" keeps ln(1/alpha)
SEQUENTIAL_BOUNDARY = "exact"
#: the choice of the class to test unless told otherwise: "all" tests every class on the same samples
#: (`certify.selection`: no selection draws, about 1e-4 of alpha for the union over the classes); "argmax" is
#: Cohen's (the most frequent of n0 separate draws, 51 of them when all agree)
SEQUENTIAL_SELECTION = "all"
#: the futility level gamma unless told otherwise ("off" turns the rule off). Exact cost
#: (benchmarks/futility_cost.py: max_n = 100,000, p0 = Phi(r/sigma) for r/sigma = 0.5, 1, 2): at most 1.1
#: points of certification probability at rates from q to q + (q - p0), about half the samples at p0; on
#: the MNIST benchmark it keeps Cohen's certified accuracy (README, Sample-efficient certification). 0.2
#: kept the same accuracy but saved nothing on Cohen's 20 digits at sigma 0.5.
SEQUENTIAL_FUTILITY = 0.3


def check_radii(radii: Any) -> list[float]:
    """The radii to decide: a non-empty list of positive, finite numbers."""
    if not isinstance(radii, (list, tuple)) or not radii or not all(number(r) and r > 0 for r in radii):
        raise ValueError(f"sequential mode needs positive radii (options['radii'] / --radii), got {radii!r}")
    return list(radii)


def read_futility(text: str) -> float | str:
    """--futility: a level gamma, or 'off' (the range is checked with the other settings)."""
    try:
        return "off" if text.strip().lower() == "off" else float(text)
    except ValueError:
        raise ValueError(f"expected a probability in (0, 1) or 'off', got {text!r}") from None


def check_futility(value: Any) -> float | str:
    value = "off" if value is False else value  # YAML reads a bare `off` as false
    if value != "off" and not (number(value) and 0 < value < 1):
        raise ValueError(f"futility must be a probability in (0, 1) or 'off' (unset: {SEQUENTIAL_FUTILITY}), got {value!r}")
    return value


@register_mode("sequential", summary="anytime-valid test of each radius of --radii, stopping early")
class Sequential(Mode):
    name = "sequential"
    summary = "anytime-valid test of each radius of --radii, stopping as soon as all are decided (n = most samples)"
    columns = COLUMNS + ("certified",)
    options = (
        Option("radii", "comma-separated radii to decide", kind=NUMBERS, check=check_radii),
        STEP, GROWTH,
        Option("boundary", "exact (later thresholds lowered until the exact chance of a wrong certificate on the "
               f"schedule is alpha) or ville (ln(1/alpha) at every check); default {SEQUENTIAL_BOUNDARY}",
               choices=BOUNDARIES, default=SEQUENTIAL_BOUNDARY),
        Option("mixture", "the betting test's prior, over all rates (two-sided, default) or only the alternative "
               "(one-sided: fewer samples, same guarantee)", choices=MIXTURES),
        Option("futility", "give up on a radius once, with confidence 1 - GAMMA, its rate is below what the test "
               "needs by --n (never a wrong certificate; at most GAMMA of power lost where --n suffices, about 1 "
               f"point at the default); default {SEQUENTIAL_FUTILITY}; 'off' turns it off", kind=read_futility,
               check=check_futility, default=SEQUENTIAL_FUTILITY, metavar="GAMMA"),
        Option("selection", "the class to test: all (every class on the same samples, no selection draws; about "
               "1e-4 of alpha for the union, default) or argmax (Cohen's, the most frequent of --n0 draws)",
               choices=SELECTIONS, default=SEQUENTIAL_SELECTION),
    )
    parsers = {"certified": lambda text: text}
    hints = {"bound": "its tests decide preset radii with the one-class test; --mode anytime --bound two-class gives "
                      "the two-class radius with early stopping"}

    def check(self, settings) -> None:
        if settings.options.radii is None:
            check_radii(None)
        check_step(settings)

    def cells(self, result: GridCertificate) -> dict[str, str]:
        return {**certificate_cells(result), "certified": ",".join(str(int(v)) for v in result.certified)}

    def check_line(self, row: Mapping[str, str], s: Mapping[str, Any]) -> str | None:
        problem = check_counts(row, s, exact_n=False) or check_reachable(row, s)
        if problem:
            return problem
        radii = sorted({float(r) for r in (s.get("options") or {}).get("radii") or ()})
        flags = [v == "1" for v in row["certified"].split(",")] if row["certified"] else []
        if len(flags) != len(radii):
            return f"certified has {len(flags)} decisions for the run's {len(radii)} radii"
        if any(later and not earlier for earlier, later in zip(flags, flags[1:])):
            return f"certified {row['certified']} is not a prefix of the radii (a claim at r needs every smaller one)"
        largest = max((r for r, c in zip(radii, flags) if c), default=0.0)
        return check_radius(row, largest, not any(flags), f"certified {row['certified']} at radii {radii}")

    def stream(self, smoothed, items, s):
        o = s.options
        indices, images = split(items)
        return certify_at_stream(smoothed, images, sorted(o.radii), s.alpha, max_n=s.n, batch_size=s.batch, seed=s.seed,
                                 indices=indices, n0=s.n0, step=o.step, growth=o.growth or 0.0,
                                 mixture=o.mixture or "two-sided", futility=None if o.futility == "off" else o.futility,
                                 boundary=o.boundary or "ville", selection=o.selection or "argmax")
