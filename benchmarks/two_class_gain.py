"""How often, and by how much, the two-class bound raises the certified radius: two runs, image by image.

Reads the result folders of the same comparison certified with the one-class bound (Cohen's) and with
``bound: two-class``: same images, counts, seed and batch, so both certificates of an image come from the
very same samples. For each pipeline it reports the images whose radius the two-class bound raised or
lowered (it spends half of alpha on the runner-up, so it can be slightly smaller where the votes are
concentrated), the gains, the certified accuracy at each radius and the ACR of both.

    python benchmarks/two_class_gain.py --one recipes/results/imagenet_efficientnet_ffdnet \\
        --two recipes/results/imagenet_two_class --out benchmarks/results/two_class_gain.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from certify.analysis import load_result
from benchlib import write_json

ROOT = Path(__file__).resolve().parents[1]


def compare_runs(one: Path, two: Path, radii: list[float]) -> dict:
    """The per-image comparison of one pipeline's one-class and two-class result files."""
    a, b = load_result(one), load_result(two)
    sa, sb = a.manifest.get("settings", {}), b.manifest.get("settings", {})
    for key in ("classifier", "denoiser", "dataset", "sigma", "n0", "n", "alpha", "batch", "seed"):
        if sa.get(key) != sb.get(key):
            raise ValueError(f"{one} and {two} differ in {key} ({sa.get(key)!r} vs {sb.get(key)!r}): not the same samples")
    if sb.get("options", {}).get("bound") != "two-class" or sa.get("options", {}).get("bound"):
        raise ValueError(f"expected {one} one-class and {two} two-class")
    common = sorted(set(a.idx.tolist()) & set(b.idx.tolist()))
    pick = lambda r: {int(i): k for k, i in enumerate(r.idx)}  # noqa: E731
    ia, ib = pick(a), pick(b)
    r1 = np.array([a.radius[ia[i]] * a.correct[ia[i]] for i in common])
    r2 = np.array([b.radius[ib[i]] * b.correct[ib[i]] for i in common])
    raised, lowered = r2 > r1, r2 < r1
    return {
        "images": len(common),
        "raised": int(raised.sum()), "lowered": int(lowered.sum()),
        "newly_certified": int(((r1 == 0) & (r2 > 0)).sum()),
        "mean_gain_where_raised": float((r2 - r1)[raised].mean()) if raised.any() else 0.0,
        "max_gain": float((r2 - r1).max()) if len(common) else 0.0,
        "max_loss": float((r1 - r2).max()) if len(common) else 0.0,
        "acr": {"one-class": float(r1.mean()), "two-class": float(r2.mean())},
        "certified_accuracy": {f"{r:g}": {"one-class": float(np.mean((r1 > 0) & (r1 >= r))),
                                          "two-class": float(np.mean((r2 > 0) & (r2 >= r)))} for r in radii},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", type=Path, required=True, help="result folder of the one-class run")
    p.add_argument("--two", type=Path, required=True, help="result folder of the two-class run")
    p.add_argument("--radii", default="0,0.05,0.1,0.15,0.25,0.35")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "two_class_gain.json")
    args = p.parse_args(argv)
    radii = [float(r) for r in args.radii.split(",")]
    names = sorted(f.stem for f in args.two.glob("*.tsv") if (args.one / f.name).is_file())
    if not names:
        raise SystemExit(f"no result file of {args.two} has a namesake in {args.one}")
    result = {"benchmark": "two_class_gain", "one_class": str(args.one), "two_class": str(args.two),
              "pipelines": {name: compare_runs(args.one / f"{name}.tsv", args.two / f"{name}.tsv", radii)
                            for name in names}}
    write_json(args.out, result, echo=True)
    return result


if __name__ == "__main__":
    main()
