"""``anytime``: the confidence-sequence radius (`certify.sequential.certify_anytime_stream`): the running max of
the betting lower bound on cA's rate gives sigma PhiInv(L) at whatever n sampling stops (at ``n``, or once more
samples would add little); ``--bound two-class`` bounds the runner-up too, as Cohen mode's split. Packed as
the sequential mode."""

from __future__ import annotations

from typing import Any, Mapping

from ..lines import check_counts, check_radius, check_reachable, two_class_radius_of
from ..sequential import certify_anytime_stream
from ..stats import Certificate, radius_from_p
from . import BOUND, GROWTH, STEP, Mode, check_step, register_mode, split
from .certify import COLUMNS, certificate_cells, with_bound


@register_mode("anytime", summary="confidence-sequence radius, stopping when it stops growing")
class Anytime(Mode):
    name = "anytime"
    summary = "confidence-sequence radius, stopping when more samples would add little (n = most samples)"
    columns = COLUMNS
    options = (STEP, GROWTH, BOUND)

    def check(self, settings) -> None:
        check_step(settings)

    def file_columns(self, settings) -> tuple[str, ...]:
        return with_bound(self.columns, settings)

    def cells(self, result: Certificate) -> dict[str, str]:
        return certificate_cells(result)

    def check_line(self, row: Mapping[str, str], s: Mapping[str, Any]) -> str | None:
        problem = check_counts(row, s, exact_n=False) or check_reachable(row, s)
        if problem:
            return problem
        pA = float(row["pA_lower"])
        if (s.get("options") or {}).get("bound") == "two-class":
            problem, radius, _ = two_class_radius_of(row, s)
        else:
            radius = radius_from_p(s["sigma"], pA)
        return problem or check_radius(row, radius, radius == 0, f"pA_lower {pA!r} at sigma = {s['sigma']}")

    def stream(self, smoothed, items, s):
        o = s.options
        indices, images = split(items)
        return certify_anytime_stream(smoothed, images, s.alpha, max_n=s.n, batch_size=s.batch, seed=s.seed,
                                      indices=indices, n0=s.n0, step=o.step, growth=o.growth or 0.0,
                                      bound=o.bound or "one-class")
