"""The statistics behind a certificate (Cohen et al. 2019, section 3.2)."""

from __future__ import annotations

from scipy.stats import beta, binomtest, norm


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


def radius_from_p(sigma: float, p_lower: float) -> float:
    """L2 radius sigma * PhiInv(p_lower) of a smoothed classifier whose top class has prob >= p_lower
    (Cohen et al., Theorem 1); 0.0 when p_lower <= 1/2, where nothing is certified.

    >>> round(radius_from_p(0.5, 0.993116), 3), radius_from_p(0.5, 0.4)
    (1.232, 0.0)
    """
    return float(sigma * norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


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


__all__ = ["check_alpha", "clopper_pearson_lower", "radius_from_p", "two_sided_binomial_pvalue", "max_radius"]
