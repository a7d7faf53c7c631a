"""``predict``: Cohen et al.'s PREDICT. n draws of the "prediction" stream; the top class unless the two-sided
binomial test cannot separate the top two counts at alpha (then -1). No radius: PREDICT certifies nothing.
Packed like CERTIFY (`Smoothed.predict_stream`)."""

from __future__ import annotations

from typing import Any, Mapping

from ..smoothing import Prediction
from ..stats import ABSTAIN, two_sided_binomial_pvalue
from . import Mode, register_mode, split


@register_mode("predict", summary="Cohen's PREDICT: the smoothed prediction, no radius")
class Predict(Mode):
    name = "predict"
    summary = "Cohen's PREDICT: the smoothed prediction or an abstention, no radius"
    columns = ("idx", "label", "predict", "correct", "time", "nA", "nB", "n")
    uses_n0 = False

    def cells(self, result: Prediction) -> dict[str, str]:
        return {"predict": str(result.prediction), "nA": str(result.nA), "nB": str(result.nB), "n": str(result.n)}

    def check_line(self, row: Mapping[str, str], s: Mapping[str, Any]) -> str | None:
        n, nA, nB = int(row["n"]), int(row["nA"]), int(row["nB"])
        if n != s["n"]:
            return f"n = {n} is not the run's n = {s['n']}"
        if not (0 <= nB <= nA and nA + nB <= n):
            return f"the top two counts nA = {nA}, nB = {nB} are impossible among n = {n}"
        abstain = two_sided_binomial_pvalue(nA, nA + nB, 0.5) > s["alpha"]
        if (int(row["predict"]) == ABSTAIN) != abstain:
            return f"predict {row['predict']} does not follow from nA = {nA}, nB = {nB} at alpha = {s['alpha']}"
        return None

    def stream(self, smoothed, items, s):
        indices, images = split(items)
        return smoothed.predict_stream(images, s.n, s.alpha, s.batch, s.seed, indices)
