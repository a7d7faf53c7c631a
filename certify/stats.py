"""The statistics behind a certificate (Cohen et al. 2019, section 3.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from scipy.stats import beta, binomtest, norm


ABSTAIN = -1


def check_alpha(alpha: float) -> float:
    """``alpha`` itself when it is a probability in (0, 1); otherwise a ValueError naming it."""
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return alpha


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on p from k successes in n.

    ``beta.ppf`` is NaN for k = 0, so that case is the exact 0; k = n is exactly alpha ** (1/n).

    >>> round(clopper_pearson_lower(100, 100, 0.001), 6)
    0.933254
    >>> clopper_pearson_lower(0, 10, 0.05)
    0.0
    """
    check_alpha(alpha)
    if not (0 <= k <= n and n >= 1):
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")
    if k == 0:
        return 0.0
    if k == n:
        return alpha ** (1.0 / n)
    return float(beta.ppf(alpha, k, n - k + 1))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound on p from k successes in n.

    >>> round(clopper_pearson_upper(0, 100, 0.001), 6) == round(1 - clopper_pearson_lower(100, 100, 0.001), 6)
    True
    """
    return 1.0 - clopper_pearson_lower(n - k, n, alpha)


BOUNDS = ("one-class", "two-class")


def two_class_levels(alpha: float, num_classes: int) -> tuple[float, float]:
    """How the two-class bound spends alpha: (level of pA_lower, level of each other class's upper bound).

    >>> two_class_levels(0.001, 3)
    (0.0005, 0.00025)
    """
    return alpha / 2, alpha / (2 * (num_classes - 1))


def two_class_bounds(counts: Sequence[int], cA: int, alpha: float) -> tuple[float, float]:
    """(pA_lower, pB_upper) that hold together with probability >= 1 - alpha (Cohen et al., Theorem 1).

    alpha is split in halves: pA_lower is Clopper-Pearson at alpha / 2; pB_upper bounds
    max_{c != A} p_c by Clopper-Pearson at alpha / (2 (K - 1)) for each of the K - 1 other classes
    (Bonferroni; the bound grows with the count, so only the largest other count matters), and never
    exceeds 1 - pA_lower, which holds whenever pA_lower does. ``counts`` are the K class counts of the
    estimation samples; cA was chosen on other samples.

    >>> a, b = two_class_bounds([500, 300, 200], 0, 0.001)
    >>> round(a, 3), round(b, 3)
    (0.448, 0.352)
    """
    check_alpha(alpha)
    n, K = int(sum(counts)), len(counts)
    if K < 2 or not 0 <= cA < K:
        raise ValueError(f"the two-class bound needs K >= 2 classes and cA in [0, K), got K={K}, cA={cA!r}")
    level_a, level_b = two_class_levels(alpha, K)
    pA_lower = clopper_pearson_lower(int(counts[cA]), n, level_a)
    runner_up = max(int(c) for i, c in enumerate(counts) if i != cA)
    return pA_lower, min(1.0 - pA_lower, clopper_pearson_upper(runner_up, n, level_b))


def two_class_radius(sigma: float, pA_lower: float, pB_upper: float) -> float:
    """sigma / 2 (PhiInv(pA_lower) - PhiInv(pB_upper)) when pA_lower > pB_upper, else 0.0 (Theorem 1).

    With pB_upper = 1 - pA_lower it is `radius_from_p`'s sigma PhiInv(pA_lower).

    >>> round(two_class_radius(0.5, 0.6, 0.1), 4), two_class_radius(0.5, 0.3, 0.3)
    (0.3837, 0.0)
    """
    if pA_lower <= pB_upper:
        return 0.0
    return float(sigma / 2 * (norm.ppf(pA_lower) - norm.ppf(pB_upper)))


def radius_from_p(sigma: float, p_lower: float) -> float:
    """L2 radius sigma * PhiInv(p_lower) of a smoothed classifier whose top class has prob >= p_lower
    (Cohen et al., Theorem 1); 0.0 when p_lower <= 1/2, where nothing is certified.

    >>> round(radius_from_p(0.5, 0.993116), 3), radius_from_p(0.5, 0.4)
    (1.232, 0.0)
    """
    return float(sigma * norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


@dataclass(frozen=True)
class Certificate:
    """What CERTIFY found for one image; ``prediction == -1`` means abstain."""

    prediction: int
    radius: float
    pA_lower: float
    nA: int
    n: int
    n0: int
    pB_upper: float | None = None  # the two-class bound's runner-up bound (None: one-class, 1 - pA_lower)


def certificate(counts: Sequence[int], cA: int, n0: int, alpha: float, sigma: float,
                bound: str = "one-class") -> Certificate:
    """CERTIFY's decision from the estimation counts of the class cA chosen on n0 other samples.

    one-class (Cohen et al.): pA_lower by Clopper-Pearson at alpha, abstain unless > 1/2, radius
    sigma PhiInv(pA_lower). two-class: `two_class_bounds` and `two_class_radius`.

    >>> certificate([2, 998], 1, 100, 0.001, 0.5).radius > 0, certificate([500, 300, 200], 0, 100, 0.001, 0.5).prediction
    (True, -1)
    >>> certificate([500, 300, 200], 0, 100, 0.001, 0.5, bound="two-class").prediction
    0
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
    n, nA = int(sum(counts)), int(counts[cA])
    if bound == "two-class":
        pA_lower, pB_upper = two_class_bounds(counts, cA, alpha)
        radius = two_class_radius(sigma, pA_lower, pB_upper)
        return Certificate(cA if pA_lower > pB_upper else ABSTAIN, radius, pA_lower, nA, n, n0, pB_upper)
    pA_lower = clopper_pearson_lower(nA, n, alpha)
    if pA_lower <= 0.5:
        return Certificate(ABSTAIN, 0.0, pA_lower, nA, n, n0)
    return Certificate(cA, radius_from_p(sigma, pA_lower), pA_lower, nA, n, n0)


def two_sided_binomial_pvalue(k: int, n: int, p: float = 0.5) -> float:
    """p-value of the exact two-sided binomial test (``scipy.stats.binomtest``).

    >>> two_sided_binomial_pvalue(5, 10)
    1.0
    """
    if n == 0:
        return 1.0
    return float(binomtest(k, n, p, alternative="two-sided").pvalue)


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius n samples can certify (all n agree): sigma * PhiInv(alpha ** (1/n)).

    >>> round(max_radius(1.0, 100_000, 0.001), 4)
    3.8115
    """
    return radius_from_p(sigma, clopper_pearson_lower(n, n, alpha))


__all__ = ["ABSTAIN", "BOUNDS", "Certificate", "certificate", "check_alpha", "clopper_pearson_lower", "clopper_pearson_upper", "max_radius", "radius_from_p",
           "two_class_bounds", "two_class_levels", "two_class_radius", "two_sided_binomial_pvalue"]
