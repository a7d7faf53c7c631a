"""Would the tests see a broken guarantee? Plausible one-line bugs, each put into a copy of the repository.

For each mutation (file, exact old text, new text) the tracked files (and untracked ones git does not
ignore) are copied to a temporary folder, the old text is replaced, and pytest runs the mutation's test
files there (PYTHONPATH pointing at the copy, one thread). A mutation is "caught" when one of its oracle
tests fails (a statistical or exact-reference test, named in ``oracles``), "caught, not by an oracle" when
only other tests fail, "missed" when every test passes, and "pattern stale" when the old text does not
occur exactly once (the code moved: update the pattern; `tests/test_mutation_patterns.py` says so first).
The first seven are the bugs of issue 29 that no test saw; the others were caught already and stay caught.
Run on demand (minutes; not part of ``make test``):

    OMP_NUM_THREADS=1 python benchmarks/mutation_check.py [--only NAME ...] [--suite]

writes benchmarks/results/mutation_check.json (each mutation, its status, the failing tests and their messages).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib import write_json

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # the test files run against it
    oracles: tuple[str, ...]  # the tests meant to catch it (node ids, or their prefixes)
    bug: str


G, B = "tests/test_guarantees.py", "tests/test_boundary.py"
MUTATIONS = (
    Mutation("selection-on-estimation-stream", "certify/smoothing.py",
             'return Draws(x, self.generator(seed, index, "selection"), n0, batch_size, self.num_classes, estimation, k, vote)',
             'return Draws(x, self.generator(seed, index, "estimation"), n0, batch_size, self.num_classes, estimation, k, vote)',
             (G,), (f"{G}::test_selection_and_estimation_samples_are_independent",),
             "Cohen's cA chosen on the estimation stream, whose samples also enter the bound"),
    Mutation("anytime-two-class-no-split", "certify/sequential.py",
             "level_a, level_b = two_class_levels(self.alpha, len(self.counts))",
             "level_a, level_b = self.alpha, self.alpha",
             (G,), (f"{G}::test_anytime_two_class_is_wrong_no_more_often_than_its_definition",),
             "anytime two-class with both confidence sequences at alpha"),
    Mutation("futility-at-one-minus-gamma", "certify/boundary.py",
             '"below"), q, k, futility)', '"below"), q, k, 1 - futility)',
             (B,), (f"{B}::test_futility_costs_exactly_what_its_definition_says",),
             "the futility test at level 1 - gamma instead of gamma"),
    Mutation("two-class-levels-not-split", "certify/stats.py",
             "return alpha / 2, alpha / (2 * (num_classes - 1))", "return alpha, alpha",
             (G,), (f"{G}::test_two_class_certificate_is_wrong_with_probability_below_alpha",
                    f"{G}::test_anytime_two_class_is_wrong_no_more_often_than_its_definition"),
             "two-class levels not split (pA_lower and pB_upper each at alpha)"),
    Mutation("two-class-radius-sigma", "certify/stats.py",
             "return float(sigma / 2 * (norm.ppf(pA_lower) - norm.ppf(pB_upper)))",
             "return float(sigma * (norm.ppf(pA_lower) - norm.ppf(pB_upper)))",
             (G, "tests/test_stats.py"), (f"{G}::test_theorem_one_radius_is_sound_and_tight_on_the_band_oracle",
                                          "tests/test_stats.py::test_two_class_radius_stays_within"),
             "two-class radius sigma (...) instead of sigma / 2 (...)"),
    Mutation("exact-boundary-dp-strict", "certify/boundary.py",
             "cert = S >= certify_at[k]", "cert = S > certify_at[k]",
             (B,), (f"{B}::test_exact_boundary_crosses_at_p0",),
             "'>=' -> '>' in the exact boundary's DP (crossings at s_k not counted when calibrating)"),
    Mutation("every-class-union-share-dropped", "certify/selection.py",
             "tests = build(alpha * (1 - share))", "tests = build(alpha)",
             (B,), (f"{B}::test_every_class_keeps_its_claims_within_alpha",),
             "selection 'all' without the union's share of alpha"),
    # caught before issue 29; kept to show they stay caught
    Mutation("clopper-pearson-at-2-alpha", "certify/stats.py",
             "pA_lower = clopper_pearson_lower(nA, n, alpha)", "pA_lower = clopper_pearson_lower(nA, n, 2 * alpha)",
             (G,), (f"{G}::test_one_class_certificate_is_wrong", f"{G}::test_linear_oracle_false_certificates_within_alpha"),
             "one-class Clopper-Pearson at 2 alpha"),
    Mutation("radius-from-point-estimate", "certify/stats.py",
             "return Certificate(cA, radius_from_p(sigma, pA_lower), pA_lower, nA, n, n0)",
             "return Certificate(cA, radius_from_p(sigma, nA / n), pA_lower, nA, n, n0)",
             (G,), (f"{G}::test_one_class_certificate_is_wrong", f"{G}::test_linear_oracle"),
             "the radius from nA / n instead of pA_lower"),
    Mutation("noise-clamped", "certify/smoothing.py",
             "part.mul_(self.sigma).add_(x)  #", "part.mul_(self.sigma).add_(x).clamp_(0.0, 1.0)  #",
             ("tests/test_smoothing.py",), ("tests/test_smoothing.py::test_noise_is_drawn_in_fp32",),
             "noisy images clipped to [0, 1] before the classifier"),
    Mutation("noise-doubled", "certify/smoothing.py",
             "part.mul_(self.sigma).add_(x)  #", "part.mul_(2 * self.sigma).add_(x)  #",
             ("tests/test_smoothing.py",), ("tests/test_smoothing.py::test_noise_is_drawn_in_fp32",),
             "noise at 2 sigma (valid but wrong: radii for sigma)"),
    Mutation("noise-halved", "certify/smoothing.py",
             "part.mul_(self.sigma).add_(x)  #", "part.mul_(self.sigma / 2).add_(x)  #",
             (G, "tests/test_smoothing.py"), (f"{G}::test_linear_oracle", "tests/test_smoothing.py::test_noise_is_drawn_in_fp32"),
             "noise at sigma / 2 with radii for sigma (false certificates)"),
    Mutation("diffusion-level-at-sigma", "denoisers/diffusion.py",
             "self._plans[key] = self.make_plan(2.0 * float(sigma) * gain)",
             "self._plans[key] = self.make_plan(float(sigma) * gain)",
             ("tests/test_ddpm.py",), ("tests/test_ddpm.py",),
             "diffusion timestep chosen for sigma instead of 2 sigma ([-1, 1] units)"),
    Mutation("predict-at-2-alpha", "certify/smoothing.py",
             "answer = ABSTAIN if two_sided_binomial_pvalue(nA, nA + nB, 0.5) > alpha else cA",
             "answer = ABSTAIN if two_sided_binomial_pvalue(nA, nA + nB, 0.5) > 2 * alpha else cA",
             (G,), (f"{G}::test_predict_returns_the_wrong_class",), "PREDICT's binomial test at 2 alpha"),
    Mutation("predict-one-sided", "certify/stats.py",
             'binomtest(k, n, p, alternative="two-sided")', 'binomtest(k, n, p, alternative="greater")',
             (G,), (f"{G}::test_predict_returns_the_wrong_class",), "PREDICT's binomial test one-sided"),
    Mutation("every-class-union-skips-second-class", "certify/selection.py",
             "total, j = 0.0, 2", "total, j = 0.0, 3",
             (B,), (f"{B}::test_every_class_keeps_its_claims_within_alpha",),
             "selection 'all': the union over the other classes misses the second largest"),
)


def apply(text: str, mutation: Mutation) -> str | None:
    """The mutated text, or None when the old text does not occur exactly once."""
    return text.replace(mutation.old, mutation.new) if text.count(mutation.old) == 1 else None


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


def run(mutation: Mutation, files: list[str], suite: bool, timeout: int) -> dict:
    start = time.time()
    text = (ROOT / mutation.file).read_text() if (ROOT / mutation.file).is_file() else ""
    mutated = apply(text, mutation)
    if mutated is None:
        return {"status": "pattern stale", "caught_by": [], "seconds": 0.0}
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as tmp:
        for name in files:
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, Path(tmp) / name)
        (Path(tmp) / mutation.file).write_text(mutated)
        targets = ["tests", "-x"] if suite else list(mutation.tests)
        env = {**os.environ, "PYTHONPATH": tmp, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "COLUMNS": "400"}  # wide enough that pytest's summary keeps each failure's message
        proc = subprocess.run([sys.executable, "-m", "pytest", *targets, "-q", "-rf", "-p", "no:cacheprovider",
                               "--timeout", str(timeout)], cwd=tmp, env=env, capture_output=True, text=True)
    summary = re.findall(r"^FAILED (\S+)(?: - (.*))?$", proc.stdout, flags=re.M)
    failed = [node for node, _ in summary]
    by_oracle = [t for t in failed if any(t.startswith(o) for o in mutation.oracles)]
    if proc.returncode == 0:
        status = "missed"
    elif proc.returncode == 1 and failed:
        status = "caught" if by_oracle else "caught, not by an oracle"
    else:
        status = f"error (pytest exit {proc.returncode})"
    return {"status": status, "caught_by": failed, "oracle_caught_by": by_oracle,
            "messages": {node: message for node, message in summary if message},
            "seconds": round(time.time() - start, 1), **({"output": proc.stdout[-3000:]} if status.startswith("error") else {})}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    p.add_argument("--suite", action="store_true", help="run the whole suite with -x instead of each mutation's files")
    p.add_argument("--timeout", type=int, default=600, help="pytest-timeout per test (seconds)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mutation_check.json"))
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        p.error(f"no mutation named {', '.join(sorted(unknown))}; known: {', '.join(m.name for m in MUTATIONS)}")
    files = project_files()
    rows = []
    for m in chosen:
        row = {**asdict(m), **run(m, files, args.suite, args.timeout)}
        rows.append(row)
        print(f"{row['status']:>26}  {m.name:<38} {row['seconds']:>6.1f} s  "
              f"{', '.join(row.get('oracle_caught_by') or row['caught_by']) or '-'}", flush=True)
    result = {"benchmark": "mutation_check", "suite": args.suite, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "mutations": rows}
    write_json(args.out, result)
    caught = sum(row["status"] == "caught" for row in rows)
    print(f"{caught} of {len(rows)} caught by an oracle test; results in {args.out}")
    return result


if __name__ == "__main__":
    main()
