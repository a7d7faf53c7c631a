"""What the check schedule and the exact boundary save, computed exactly (no sampling): the README's boundary table.

For each threshold p0 = Phi(r / sigma), three versions of the one-sided test (futility off, so only the
boundary and the schedule differ): Ville's threshold read every 100 samples (the earlier default),
Ville's on the growing schedule (first check after 10 samples, then 2% of n apart, at most 1,000), and
the exact boundary on that schedule (the CLI's default, `certify.boundary`). At each rate: the exact
probability of certifying and the mean test samples (`SequentialTest.operating_characteristics`).
Rates: p0 (a wrong certificate: <= alpha), the rate q the Ville test needs by max_n and a few above it,
where images cost the most, and 1 (every draw a hit). Takes about a minute.

    python benchmarks/boundary_cost.py --out benchmarks/results/boundary_cost.json
"""

from __future__ import annotations

import argparse

from scipy.stats import norm

from certify.betting import MIXTURES
from certify.boundary import check_schedule, sequential_test
from benchlib import write_json
from certify.modes import SEQUENTIAL_GROWTH, SEQUENTIAL_STEP

#: rate = p0 + t (q - p0), q the rate Ville's test needs by max_n; None: every draw a hit
POINTS = {"p0": 0.0, "q": 1.0, "q + (q - p0)": 2.0, "p0 + 4 (q - p0)": 4.0, "1": None}


def versions(max_n: int, step: int, growth: float, max_step: int) -> dict[str, tuple[tuple[int, ...], str]]:
    growing = check_schedule(max_n, step, growth, max_step)
    return {"ville, every 100": (check_schedule(max_n, 100), "ville"), "ville, growing": (growing, "ville"),
            "exact, growing": (growing, "exact")}


def cost(z: float, alpha: float, max_n: int, mixture: str, schedules: dict) -> dict:
    p0 = float(norm.cdf(z))
    tests = {name: sequential_test(p0, alpha, max_n, None, mixture, None, checks, boundary)
             for name, (checks, boundary) in schedules.items()}
    q = tests["ville, every 100"].needed_rate
    rates = {name: 1.0 if t is None else min(1.0, p0 + t * (q - p0)) for name, t in POINTS.items()}
    return {"r_over_sigma": z, "p0": p0, "q": q, "rates": rates,
            "late_threshold": {name: t.late_threshold for name, t in tests.items()},
            "versions": {name: {rate: dict(zip(("p_certify", "p_abstain", "mean_samples"),
                                               t.operating_characteristics(p)))
                                for rate, p in rates.items()} for name, t in tests.items()}}


def markdown(result: dict) -> str:
    """One row per threshold and rate: mean test samples (P(certify)) for each version."""
    names = list(result["thresholds"][0]["versions"])
    lines = ["| r / sigma | rate | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for t in result["thresholds"]:
        for rate, p in t["rates"].items():
            cells = [f"{t['versions'][n][rate]['mean_samples']:,.0f} ({t['versions'][n][rate]['p_certify']:.3g})"
                     for n in names]
            lines.append(f"| {t['r_over_sigma']:g} | {rate} = {p:.5f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--r-over-sigma", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                   help="thresholds p0 = Phi(r / sigma) (the MNIST benchmark's radii 0.25 / 0.5 / 1 at sigma 0.5)")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--max-n", type=int, default=100_000)
    p.add_argument("--step", type=int, default=SEQUENTIAL_STEP)
    p.add_argument("--growth", type=float, default=SEQUENTIAL_GROWTH)
    p.add_argument("--max-step", type=int, default=1000)
    p.add_argument("--mixture", choices=MIXTURES, default="one-sided")
    p.add_argument("--out", default="benchmarks/results/boundary_cost.json")
    args = p.parse_args(argv)
    schedules = versions(args.max_n, args.step, args.growth, args.max_step)
    result = {"benchmark": "boundary_cost", "alpha": args.alpha, "max_n": args.max_n, "mixture": args.mixture,
              "growing": {"step": args.step, "growth": args.growth, "max_step": args.max_step},
              "thresholds": [cost(z, args.alpha, args.max_n, args.mixture, schedules) for z in args.r_over_sigma]}
    write_json(args.out, result)
    print(markdown(result), end="")
    return result


if __name__ == "__main__":
    main()
