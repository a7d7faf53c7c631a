"""What a result line may say, given the run's settings: a resume keeps, and analyze counts, only lines that
follow from their own evidence and from the settings the manifest records.

`certify.results` checks that each cell has its type (an int, a probability, 0/1); this module checks what
the cells say together. A well-formed but false line (radius 3.0 from n = 1, ``correct = 1`` with
``predict != label``, n = 99,999 in a run of n = 4,000) is named and never trusted:

- every mode: ``correct`` is ``predict == label`` for a known label (>= 0) and no abstention;
- Cohen's CERTIFY: n and n0 are the run's; pA_lower is Clopper-Pearson of (nA, n) at the bound's level,
  and the class and radius follow from it (one-class: sigma PhiInv(pA_lower); two-class: Theorem 1 with
  pB_upper);
- PREDICT: n is the run's, and the answer follows from the two-sided binomial test of the top two counts;
- sequential and anytime modes: at most the run's n and n0 samples, and no radius beyond what n samples can
  certify at all (a valid level-alpha test that certifies p0 = Phi(r / sigma) after m <= n draws has
  p0^m <= alpha: the all-hits path crosses first), so pA_lower <= alpha^(1/n) and r <= `max_radius`;
  the radius is the largest certified of the run's radii (a prefix of them), or the anytime radius of
  pA_lower;
- attack: n and the eps grid are the run's, one PREDICT answer per eps.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from .stats import (ABSTAIN, certificate, clopper_pearson_lower, max_radius, radius_from_p, two_class_levels,
                    two_class_radius, two_sided_binomial_pvalue)

Row = Mapping[str, str]
_TOL = 1e-9


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _TOL * max(1.0, abs(b))


def check_line(row: Row, settings: Mapping[str, Any] | None = None) -> str | None:
    """What is false about one type-checked line (None when nothing is), against the recorded ``settings``
    (a manifest's ``settings``; without them only what the line says about itself is checked).

    >>> s = {"mode": "certify", "sigma": 0.25, "n": 1, "n0": 10, "alpha": 0.001, "options": {}}
    >>> check_line({"label": "3", "predict": "3", "radius": "3.0", "correct": "1", "pA_lower": "0.999",
    ...             "nA": "1", "n": "1", "n0": "10"}, s)
    'pA_lower 0.999 does not follow from nA = 1 of n = 1 (Clopper-Pearson at 0.001: 0.001)'
    """
    label, predict = int(row["label"]), int(row["predict"])
    if predict < ABSTAIN:
        return f"predict {predict} is neither a class id nor -1 (abstain)"
    if "correct" in row and int(row["correct"]) != int(predict == label and label >= 0 and predict != ABSTAIN):
        return f"correct = {row['correct']} does not follow from predict {predict} and label {label}"
    check = _MODES.get((settings or {}).get("mode"))
    if check is None:
        return None
    try:
        return check(row, settings)
    except KeyError:  # a file without one of the mode's columns (another tool's): only the above is checked
        return None


def _counts(row: Row, s: Mapping[str, Any], exact_n: bool) -> str | None:
    """n (exactly the run's, or at most it), n0 at most the run's, 0 <= nA <= n."""
    n, nA = int(row["n"]), int(row["nA"])
    if exact_n and n != s["n"] or not 0 <= n <= s["n"]:
        return f"n = {n} is not {'' if exact_n else 'within '}the run's n = {s['n']}"
    if "n0" in row and not (0 <= int(row["n0"]) <= s["n0"] and (not exact_n or int(row["n0"]) == s["n0"])):
        return f"n0 = {row['n0']} does not match the run's n0 = {s['n0']}"
    if not 0 <= nA <= n:
        return f"nA = {nA} is not between 0 and n = {n}"
    return None


def _radius(row: Row, expected: float, abstain: bool, why: str) -> str | None:
    radius, predict = float(row["radius"]), int(row["predict"])
    if not _close(radius, expected):
        return f"radius {radius!r} does not follow from {why} (expected {expected!r})"
    if (predict == ABSTAIN) != abstain:
        return f"predict {predict} does not follow from {why} ({'abstain' if abstain else 'a class'} expected)"
    return None


def _reachable(row: Row, s: Mapping[str, Any]) -> str | None:
    """No bound and no radius beyond what n draws can give at level alpha (module docstring)."""
    n, pA, radius = int(row["n"]), float(row["pA_lower"]), float(row["radius"])
    top = clopper_pearson_lower(n, n, s["alpha"]) if n else 0.0
    if pA > top + _TOL:
        return f"pA_lower {pA!r} is beyond what n = {n} draws can bound at alpha = {s['alpha']} (at most {top:.6g})"
    if n and radius > max_radius(s["sigma"], n, s["alpha"]) * (1 + _TOL) or not n and radius > 0:
        return f"radius {radius!r} is beyond what n = {n} draws can certify at sigma = {s['sigma']}"
    return None


def _two_class(row: Row, s: Mapping[str, Any]) -> tuple[str | None, float, bool]:
    """(problem, radius, abstain) of Theorem 1 with the recorded pA_lower and pB_upper."""
    pA, pB = float(row["pA_lower"]), float(row["pB_upper"])
    if pB > 1.0 - pA + _TOL:
        return f"pB_upper {pB!r} exceeds 1 - pA_lower", 0.0, True
    return None, two_class_radius(s["sigma"], pA, pB), pA <= pB


def _certify(row: Row, s: Mapping[str, Any]) -> str | None:
    problem = _counts(row, s, exact_n=True)
    if problem:
        return problem
    n, nA, pA = int(row["n"]), int(row["nA"]), float(row["pA_lower"])
    if (s.get("options") or {}).get("bound") == "two-class":
        level = two_class_levels(s["alpha"], 2)[0]
        problem, radius, abstain = _two_class(row, s)
    else:
        level = s["alpha"]
        c = certificate([nA, n - nA], 0, int(row["n0"]), s["alpha"], s["sigma"])
        radius, abstain = c.radius, c.prediction == ABSTAIN
    expected = clopper_pearson_lower(nA, n, level)
    if not _close(pA, expected):
        return f"pA_lower {pA!r} does not follow from nA = {nA} of n = {n} (Clopper-Pearson at {level:g}: {expected:.6g})"
    return problem or _radius(row, radius, abstain, f"pA_lower {pA!r} at sigma = {s['sigma']}")


def _predict(row: Row, s: Mapping[str, Any]) -> str | None:
    n, nA, nB = int(row["n"]), int(row["nA"]), int(row["nB"])
    if n != s["n"]:
        return f"n = {n} is not the run's n = {s['n']}"
    if not (0 <= nB <= nA and nA + nB <= n):
        return f"the top two counts nA = {nA}, nB = {nB} are impossible among n = {n}"
    abstain = two_sided_binomial_pvalue(nA, nA + nB, 0.5) > s["alpha"]
    if (int(row["predict"]) == ABSTAIN) != abstain:
        return f"predict {row['predict']} does not follow from nA = {nA}, nB = {nB} at alpha = {s['alpha']}"
    return None


def _sequential(row: Row, s: Mapping[str, Any]) -> str | None:
    problem = _counts(row, s, exact_n=False) or _reachable(row, s)
    if problem:
        return problem
    radii = sorted({float(r) for r in (s.get("options") or {}).get("radii") or ()})
    flags = [v == "1" for v in row["certified"].split(",")] if row["certified"] else []
    if len(flags) != len(radii):
        return f"certified has {len(flags)} decisions for the run's {len(radii)} radii"
    if any(later and not earlier for earlier, later in zip(flags, flags[1:])):
        return f"certified {row['certified']} is not a prefix of the radii (a claim at r needs every smaller one)"
    largest = max((r for r, c in zip(radii, flags) if c), default=0.0)
    return _radius(row, largest, not any(flags), f"certified {row['certified']} at radii {radii}")


def _anytime(row: Row, s: Mapping[str, Any]) -> str | None:
    problem = _counts(row, s, exact_n=False) or _reachable(row, s)
    if problem:
        return problem
    pA = float(row["pA_lower"])
    if (s.get("options") or {}).get("bound") == "two-class":
        problem, radius, _ = _two_class(row, s)
    else:
        radius = radius_from_p(s["sigma"], pA)
    return problem or _radius(row, radius, radius == 0, f"pA_lower {pA!r} at sigma = {s['sigma']}")


def _attack(row: Row, s: Mapping[str, Any]) -> str | None:
    if int(row["n"]) != s["n"]:
        return f"n = {row['n']} is not the run's n = {s['n']}"
    eps = [float(e) for e in row["eps"].split(",")]
    wanted = [float(e) for e in (s.get("options") or {}).get("eps") or ()]
    if len(eps) != len(wanted) or not all(math.isclose(a, b) for a, b in zip(eps, wanted)):
        return f"eps {row['eps']} is not the run's grid {wanted}"
    answers = [int(v) for v in row["adv_predict"].split(",")]
    if len(answers) != len(eps) or min(answers) < ABSTAIN:
        return f"adv_predict {row['adv_predict']} is not one class id (or -1) per eps"
    return None


_MODES: dict[str, Callable[[Row, Mapping[str, Any]], str | None]] = {
    "certify": _certify, "predict": _predict, "sequential": _sequential, "anytime": _anytime, "attack": _attack}

__all__ = ["check_line"]
