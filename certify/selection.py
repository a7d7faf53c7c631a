"""How the sequential tests choose cA, the class they may certify: Cohen's argmax, or every class at once.

``selection`` (`certify.sequential.certify_at_many`):

- "argmax" (Cohen): cA is the most frequent class among n0 draws of a separate stream, and only cA is
  tested. The draws stop once the argmax can no longer change (:func:`selection_settled`): the same cA
  as all n0 draws, after 51 of 100 when every draw agrees.
- "all": no separate draws. Every class is tested on the same samples, and the first class whose test
  of the grid's smallest radius r_1 certifies becomes cA (the other classes stop there). On an easy
  image this saves the 51 selection draws, an eighth of its cost at r = 2 sigma.

Why "all" is valid. A claim for class c at r_i needs c's tests of r_1..r_i to have crossed (the grid's
prefix rule, `certify.betting`). Let c* be the class with the largest hit rate: its claims are wrong
with probability <= the tests' level, as with one class. Every other class has p_c <= 1/2, and any
claim for it, right or wrong, needs its test of r_1 to cross: probability f(p_c), where
f(p) = P_p(the test of r_1 ever crosses) grows with p (`certify.boundary`). The j-th largest rate is at
most 1/j (j of them sum to at most 1), so

    P(some claim is wrong) <= alpha_test + sum_{j=2..K} f(1/j) = alpha_test + epsilon,

with epsilon computed exactly by :func:`others_crossing` (dynamic programming, as the exact boundary;
blocks of j share the bound of their first member). :func:`every_class_tests` gives the tests a
level alpha_test = alpha (1 - share) with the least share in ``UNION_SHARES`` for which epsilon <=
alpha share: on the MNIST benchmark epsilon is 1.6e-9 at r_1 = sigma / 2 and below 1e-14 at r_1 = sigma,
so the tests run at 0.9999 alpha. Even a first radius near 0 costs at most about half of alpha
(f(1/2) <= f(p0) <= alpha_test); a test that would need more is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from .boundary import SequentialTest, crossing_probability

SELECTIONS = ("argmax", "all")
#: the shares of alpha that "all" may set aside for the classes other than the most frequent one
UNION_SHARES = (1e-4, 1e-3, 1e-2, 0.1, 0.5)
_SINGLE = 16  # others_crossing: j = 2..15 each computed, then blocks [16, 32), [32, 64), ...


def selection_gap(counts: np.ndarray, left: int) -> int:
    """The fewest further draws (of ``left``) after which the argmax of ``counts`` may be settled.

    >>> selection_gap(np.array([0, 0]), 100)   # 51 draws all going to class 0 settle it
    51
    """
    a = int(counts.argmax())
    margins = counts[a] - np.delete(counts, a)
    return min(left, max(1, (left - int(margins.min(initial=left))) // 2 + 1))


def selection_settled(counts: np.ndarray, left: int) -> bool:
    """True when the argmax after ``left`` more draws is known whatever they are (ties to the lower class).

    >>> selection_settled(np.array([50, 0]), 50), selection_settled(np.array([0, 50]), 50)   # a tie goes to class 0
    (True, False)
    """
    a = int(counts.argmax())
    margin = counts[a] - counts
    classes = np.arange(counts.size)
    return bool(np.all((classes == a) | (margin > left) | ((margin == left) & (classes > a))))


@lru_cache(maxsize=64)
def others_crossing(test: SequentialTest, num_classes: int) -> float:
    """epsilon = an upper bound on sum_{j=2..K} f(1/j), f(p) = the chance ``test`` ever certifies at rate p.

    Exact for j < 16; from 16 on, each block [a, 2a) counts a times f(1/a) (f grows with p; the computed f
    is itself an upper bound, so the block's is too).

    >>> from certify.boundary import sequential_test
    >>> t = sequential_test(0.9, 0.001, 1000, checks=range(10, 1001, 10))
    >>> others_crossing(t, 2) < 1e-12   # a second class with rate 1/2 hardly ever reaches 90%
    True
    """
    k = test.checks
    s = test.certify_min[k]
    total, j = 0.0, 2
    while j <= num_classes:
        width = 1 if j < _SINGLE else min(j, num_classes - j + 1)
        total += width * crossing_probability(1.0 / j, k, s)
        j += width
    return total


def every_class_tests(build: Callable[[float], list[SequentialTest]], alpha: float,
                      num_classes: int) -> list[SequentialTest]:
    """``build(alpha_test)``'s tests (ascending radii) at the largest level that keeps "all" within alpha.

    >>> from certify.boundary import sequential_test
    >>> build = lambda a: [sequential_test(0.9, a, 1000, checks=range(10, 1001, 10))]
    >>> every_class_tests(build, 0.001, 10)[0].alpha
    0.0009999
    """
    for share in UNION_SHARES:
        tests = build(alpha * (1 - share))
        if others_crossing(tests[0], num_classes) <= alpha * share:
            return tests
    raise ValueError(
        f"selection 'all' would spend more than half of alpha = {alpha} on the {num_classes - 1} other classes (the "
        f"test of the smallest radius, p0 = {tests[0].p0:.4f}, crosses too often at rates <= 1/2); "
        "use selection 'argmax' or a larger first radius")


__all__ = ["SELECTIONS", "UNION_SHARES", "every_class_tests", "others_crossing", "selection_gap",
           "selection_settled"]
