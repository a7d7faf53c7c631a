"""``certify``: Cohen et al.'s CERTIFY. n0 draws of the "selection" stream pick cA, n fresh draws of the
"estimation" stream bound its rate from below (Clopper-Pearson at alpha), radius sigma PhiInv(pA_lower), or
with ``--bound two-class`` Theorem 1 with the runner-up bounded too (`certify.stats.certificate`).

Images are packed: the tails of n0 and n (chunks smaller than the batch) share forward passes with the next
images' draws, each image drawing exactly what it would draw alone (`Smoothed.certify_stream`).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..lines import check_counts, check_radius, close, two_class_radius_of
from ..stats import ABSTAIN, Certificate, certificate, clopper_pearson_lower, two_class_levels
from . import BOUND, Mode, register_mode, split

#: Cohen et al.'s columns first (their analysis scripts read them), then the evidence
COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "pA_lower", "nA", "n", "n0")


def certificate_cells(c: Certificate) -> dict[str, str]:
    """The cells of a certificate (CERTIFY's, or the anytime and sequential modes')."""
    cells = {"predict": str(c.prediction), "radius": repr(float(c.radius)), "pA_lower": repr(float(c.pA_lower)),
             "nA": str(c.nA), "n": str(c.n), "n0": str(c.n0)}
    if getattr(c, "pB_upper", None) is not None:
        cells["pB_upper"] = repr(float(c.pB_upper))
    return cells


def with_bound(columns: tuple[str, ...], settings: Any) -> tuple[str, ...]:
    """The columns, with pB_upper for the two-class bound, then source."""
    return columns + (("pB_upper",) if settings.options.bound == "two-class" else ()) + ("source",)


@register_mode("certify", summary="Cohen's CERTIFY: fixed n0 and n per image")
class Certify(Mode):
    name = "certify"
    summary = "Cohen's CERTIFY: n0 samples pick the class, n fresh samples bound its rate (fixed n)"
    columns = COLUMNS
    options = (BOUND,)

    def file_columns(self, settings) -> tuple[str, ...]:
        return with_bound(self.columns, settings)

    def cells(self, result: Certificate) -> dict[str, str]:
        return certificate_cells(result)

    def check_line(self, row: Mapping[str, str], s: Mapping[str, Any]) -> str | None:
        problem = check_counts(row, s, exact_n=True)
        if problem:
            return problem
        n, nA, pA = int(row["n"]), int(row["nA"]), float(row["pA_lower"])
        if (s.get("options") or {}).get("bound") == "two-class":
            level = two_class_levels(s["alpha"], 2)[0]
            problem, radius, abstain = two_class_radius_of(row, s)
        else:
            level = s["alpha"]
            c = certificate([nA, n - nA], 0, int(row["n0"]), s["alpha"], s["sigma"])
            radius, abstain = c.radius, c.prediction == ABSTAIN
        expected = clopper_pearson_lower(nA, n, level)
        if not close(pA, expected):
            return (f"pA_lower {pA!r} does not follow from nA = {nA} of n = {n} (Clopper-Pearson at {level:g}: "
                    f"{expected:.6g})")
        return problem or check_radius(row, radius, abstain, f"pA_lower {pA!r} at sigma = {s['sigma']}")

    def stream(self, smoothed, items, s):
        indices, images = split(items)
        return smoothed.certify_stream(images, s.n0, s.n, s.alpha, s.batch, s.seed, indices, s.options.bound or "one-class")
