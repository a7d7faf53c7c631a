"""What a result line may say: the checks every mode's `Mode.check_line` is built from. A resume keeps, and
analyze counts, only lines that follow from their own evidence and from the settings the manifest records.

`certify.results` checks that each cell has its type (an int, a probability, 0/1); these check what the
cells say together. A well-formed but false line (radius 3.0 from n = 1, ``correct = 1`` with
``predict != label``, n = 99,999 in a run of n = 4,000) is named and never trusted:

- every mode: ``correct`` is ``predict == label`` for a known label (>= 0) and no abstention (`check_common`);
- the sample counts are the run's, or at most the run's where a mode stops early (`check_counts`);
- no bound and no radius beyond what n draws can give at all (`check_reachable`): a valid level-alpha test
  that certifies p0 = Phi(r / sigma) after m <= n draws has p0^m <= alpha (the all-hits path crosses
  first), so pA_lower <= alpha^(1/n) and r <= `max_radius`;
- a radius and a decision follow from the bounds that give them (`check_radius`, `two_class_radius_of`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .stats import ABSTAIN, clopper_pearson_lower, clopper_pearson_upper, max_radius, two_class_radius

Row = Mapping[str, str]
_TOL = 1e-9


def close(a: float, b: float) -> bool:
    """Equal up to the rounding of another machine's scipy (relative 1e-9)."""
    return abs(a - b) <= _TOL * max(1.0, abs(b))


def check_common(row: Row) -> str | None:
    """What a line says about itself, in every mode: predict is a class or -1, and ``correct`` is
    ``predict == label`` for a known label (>= 0) and no abstention.

    >>> check_common({"label": "2", "predict": "5", "correct": "1"})
    'correct = 1 does not follow from predict 5 and label 2'
    """
    label, predict = int(row["label"]), int(row["predict"])
    if predict < ABSTAIN:
        return f"predict {predict} is neither a class id nor -1 (abstain)"
    if "correct" in row and int(row["correct"]) != int(predict == label and label >= 0 and predict != ABSTAIN):
        return f"correct = {row['correct']} does not follow from predict {predict} and label {label}"
    return None


def check_counts(row: Row, s: Mapping[str, Any], exact_n: bool) -> str | None:
    """n exactly the run's (``exact_n``) or at most it, n0 likewise (at most, where selection stops early),
    0 <= nA <= n."""
    n, nA = int(row["n"]), int(row["nA"])
    if (exact_n and n != s["n"]) or not 0 <= n <= s["n"]:
        return f"n = {n} is not {'' if exact_n else 'within '}the run's n = {s['n']}"
    if "n0" in row and not (0 <= int(row["n0"]) <= s["n0"] and (not exact_n or int(row["n0"]) == s["n0"])):
        return f"n0 = {row['n0']} does not match the run's n0 = {s['n0']}"
    if not 0 <= nA <= n:
        return f"nA = {nA} is not between 0 and n = {n}"
    return None


def check_radius(row: Row, expected: float, abstain: bool, why: str) -> str | None:
    """The line's radius and decision are ``expected`` and ``abstain``, which follow from ``why``."""
    radius, predict = float(row["radius"]), int(row["predict"])
    if not close(radius, expected):
        return f"radius {radius!r} does not follow from {why} (expected {expected!r})"
    if (predict == ABSTAIN) != abstain:
        return f"predict {predict} does not follow from {why} ({'abstain' if abstain else 'a class'} expected)"
    return None


def check_reachable(row: Row, s: Mapping[str, Any]) -> str | None:
    """No bound and no radius beyond what n draws can give at level alpha (module docstring)."""
    n, pA, radius = int(row["n"]), float(row["pA_lower"]), float(row["radius"])
    top = clopper_pearson_lower(n, n, s["alpha"]) if n else 0.0
    if pA > top + _TOL:
        return f"pA_lower {pA!r} is beyond what n = {n} draws can bound at alpha = {s['alpha']} (at most {top:.6g})"
    if (n and radius > max_radius(s["sigma"], n, s["alpha"]) * (1 + _TOL)) or (not n and radius > 0):
        return f"radius {radius!r} is beyond what n = {n} draws can certify at sigma = {s['sigma']}"
    return None


def two_class_radius_of(row: Row, s: Mapping[str, Any]) -> tuple[str | None, float, bool]:
    """(problem, radius, abstain) of Theorem 1 from the recorded pA_lower and pB_upper. pB_upper is at most
    1 - pA_lower, and at least what a runner-up never seen in n draws gets: that path has probability
    (1 - p)^n, so an upper bound valid at level beta <= alpha / 2 (the two-class split) reaches every p with
    (1 - p)^n > beta, and pB_upper >= min(1 - pA_lower, 1 - (alpha / 2)^(1/n)) whatever the number of classes."""
    pA, pB, n = float(row["pA_lower"]), float(row["pB_upper"]), int(row["n"])
    if pB > 1.0 - pA + _TOL:
        return f"pB_upper {pB!r} exceeds 1 - pA_lower", 0.0, True
    floor = min(1.0 - pA, clopper_pearson_upper(0, n, s["alpha"] / 2) if n else 1.0)
    if pB < floor - _TOL:
        return (f"pB_upper {pB!r} is below what n = {n} draws can bound at alpha = {s['alpha']} "
                f"(at least {floor:.6g})"), 0.0, True
    return None, two_class_radius(s["sigma"], pA, pB), pA <= pB


__all__ = ["check_common", "check_counts", "check_radius", "check_reachable", "close", "two_class_radius_of"]
