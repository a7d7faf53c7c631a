"""What the futility rule costs and saves, computed exactly (no sampling): the README's futility table.

For each threshold p0 = Phi(r / sigma) and each futility level (``off`` and the ``--gammas``), the
sequential test's exact operating characteristic (`SequentialTest.operating_characteristics`: dynamic
programming over the hit count, checked every ``--step`` samples as the engine does) at five rates:
p0, halfway to q, q, and q + (q - p0) / 2, q + (q - p0), where q is the rate the test needs by max_n
(`SequentialTest.needed_rate`). Below q the budget is mostly wasted; at and above q the rule may cost
certification probability. Takes a few seconds per level.

    python benchmarks/futility_cost.py --out benchmarks/results/futility_cost.json
"""

from __future__ import annotations

import argparse

from scipy.stats import norm

from certify.boundary import check_schedule, sequential_test
from certify.betting import MIXTURES
from benchlib import write_json
from certify.modes.sequential import SEQUENTIAL_FUTILITY

POINTS = {"p0": 0.0, "(p0 + q) / 2": 0.5, "q": 1.0, "q + (q - p0) / 2": 1.5, "q + (q - p0)": 2.0}


def cost(z: float, gammas, alpha: float, max_n: int, step: int, mixture: str) -> dict:
    """The operating characteristic of the test of p0 = Phi(z) with futility off and at each gamma."""
    p0 = float(norm.cdf(z))
    checks = check_schedule(max_n, step)
    q = sequential_test(p0, alpha, max_n, None, mixture, None, checks).needed_rate
    rates = {name: p0 + t * (q - p0) for name, t in POINTS.items()}
    levels = {}
    for gamma in [None, *gammas]:
        test = sequential_test(p0, alpha, max_n, None, mixture, gamma, checks)
        levels["off" if gamma is None else f"{gamma:g}"] = {
            name: dict(zip(("p_certify", "p_abstain", "mean_samples"), test.operating_characteristics(p)))
            for name, p in rates.items()}
    return {"r_over_sigma": z, "p0": p0, "q": q, "rates": rates, "futility": levels}


def markdown(result: dict, gamma: str) -> str:
    """Ranges over the thresholds, off against ``gamma``, one row per rate."""
    lines = [f"| rate | P(certify), off | P(certify), {gamma} | mean samples, off | mean samples, {gamma} |",
             "|---|---|---|---|---|"]

    def span(values, fmt):
        lo, hi = fmt(min(values)), fmt(max(values))
        return lo if lo == hi else f"{lo}-{hi}"

    for name in POINTS:
        cells = []
        for key, fmt in (("p_certify", lambda v: f"{v:.3f}"), ("mean_samples", lambda v: f"{v:,.0f}")):
            for level in ("off", gamma):
                cells.append(span([t["futility"][level][name][key] for t in result["thresholds"]], fmt))
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--r-over-sigma", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                   help="thresholds p0 = Phi(r / sigma) (the MNIST benchmark's radii 0.25 / 0.5 / 1 at sigma 0.5)")
    p.add_argument("--gammas", type=float, nargs="+", default=[SEQUENTIAL_FUTILITY])
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--max-n", type=int, default=100_000)
    p.add_argument("--step", type=int, default=100)
    p.add_argument("--mixture", choices=MIXTURES, default="one-sided")
    p.add_argument("--out", default="benchmarks/results/futility_cost.json")
    args = p.parse_args(argv)
    result = {"benchmark": "futility_cost", "alpha": args.alpha, "max_n": args.max_n, "step": args.step,
              "mixture": args.mixture, "gammas": args.gammas,
              "thresholds": [cost(z, args.gammas, args.alpha, args.max_n, args.step, args.mixture)
                             for z in args.r_over_sigma]}
    write_json(args.out, result)
    for gamma in args.gammas:
        print(markdown(result, f"{gamma:g}"), end="")
    return result


if __name__ == "__main__":
    main()
