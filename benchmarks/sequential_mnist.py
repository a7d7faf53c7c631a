"""Sample efficiency of anytime-valid sequential certification against Cohen's fixed n, on MNIST.

For each sigma: the pipeline (classifier, denoiser) named by the templates, where ``{s}`` becomes the
sigma in hundredths with three digits (0.25 -> ``025``). Then, on evenly spaced ``mnist5k:test`` digits:
- ``sequential``: :func:`certify.sequential.certify_at_many` on the radius grid (several images per
  batch), once per ``--mixtures`` (the betting test's prior), ``--futility`` level ("off" or gamma),
  ``--boundary`` and ``--selection`` (keyed "one-sided, futility 0.3, exact, all classes"), mean samples
  per image (n0 + n) and certified
  accuracy at each radius;
- ``cohen``: ``Smoothed.certify_full`` with n = ``--cohen-n`` on the first ``--cohen-images`` of those
  digits (it is the expensive one), with the sequential figures on the same digits beside it;
- ``packing``: the first run's settings with one image per batch (batch = step) and with several
  (batch = ``--batch``): identical results, images per second.

Writes JSON (``--out``) and prints the README's markdown table (``--table JSON`` prints it again).
Example, shipped pipelines: ``python benchmarks/sequential_mnist.py --images 200 --cohen-images 50``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from certify import Smoothed
from certify.data import create_dataset
from benchlib import write_json
from certify.sequential import BOUNDARIES, MIXTURES, SELECTIONS, certify_at_many
from certify.modes import SEQUENTIAL_GROWTH, SEQUENTIAL_STEP
from certify.modes.sequential import SEQUENTIAL_BOUNDARY, SEQUENTIAL_FUTILITY, SEQUENTIAL_SELECTION
from classifiers import create_classifier
from denoisers import create_denoiser


def _pipeline(args, sigma: float) -> Smoothed:
    s = f"{round(sigma * 100):03d}"
    classifier = create_classifier(args.classifier.format(s=s)).eval()
    denoiser = None if args.denoiser in ("", "none") else create_denoiser(args.denoiser.format(s=s)).eval()
    return Smoothed(classifier, denoiser, sigma=sigma, num_classes=classifier.num_classes)


def _accuracy(correct: np.ndarray, radius: np.ndarray, radii) -> dict[str, float]:
    return {f"{r:g}": float(np.mean(correct & (radius >= r))) for r in radii}


def _futility(text: str) -> float | None:
    return None if text == "off" else float(text)


def _label(mixture: str, futility: float | None, boundary: str, selection: str) -> str:
    return ", ".join([mixture, *([] if futility is None else [f"futility {futility:g}"]), boundary,
                      "all classes" if selection == "all" else selection])


def _sequential(g, images, args, mixture, futility, boundary, selection, desc, batch_size=None, step=None,
                growth=None):
    """certify_at_many on the benchmark's digits; the schedule is the arguments' unless given."""
    start = time.perf_counter()
    growth = args.growth if growth is None else growth
    max_step = min(args.max_step, batch_size or args.batch)
    results = list(tqdm(certify_at_many(g, images, args.radii, args.alpha, args.max_n, batch_size or args.batch,
                                        seed=args.seed, indices=args.indices, n0=args.n0, step=step or args.step,
                                        mixture=mixture, futility=futility, growth=growth, max_step=max_step,
                                        boundary=boundary, selection=selection),
                        total=len(images), desc=desc, disable=args.quiet))
    return results, time.perf_counter() - start


def run_sigma(args, sigma: float, data) -> dict:
    g = _pipeline(args, sigma)
    images = [data[i][0] for i in args.indices]
    labels = np.array([data[i][1] for i in args.indices])

    m = min(args.cohen_images, len(images))
    sequential, on_cohen_images = {}, {}
    runs = [(m, f, b, c) for c in args.selection for b in args.boundary for f in args.futility for m in args.mixtures]
    for mixture, futility, boundary, selection in runs:
        label = _label(mixture, futility, boundary, selection)
        seq, seconds = _sequential(g, images, args, mixture, futility, boundary, selection, f"{label} s={sigma}")
        correct = np.array([r.cA == y for r, y in zip(seq, labels)])
        certified = np.array([r.certified for r in seq])  # (images, radii)
        samples = np.array([r.n0 + r.n for r in seq])

        def accuracy(sel):
            return {f"{r:g}": float(np.mean(correct[sel] & certified[sel, i])) for i, r in enumerate(args.radii)}

        sequential[label] = {
            "images": len(images), "mean_samples": float(samples.mean()), "median_samples": float(np.median(samples)),
            "max_samples": int(samples.max()), "certified_accuracy": accuracy(slice(None)), "seconds": seconds,
        }
        if m:
            on_cohen_images[label] = {
                "mean_samples": float(samples[:m].mean()), "certified_accuracy": accuracy(slice(0, m)),
                "sample_ratio": float((args.n0 + args.cohen_n) / samples[:m].mean()),
            }

    cohen = _cohen(args, sigma, g, images[:m], labels[:m])
    cohen["sequential_on_same_images"] = on_cohen_images

    # packing, on the uniform schedule (a check every --pack-step samples) so one image per batch is possible
    p, step = min(args.pack_images, len(images)), args.pack_step
    first = runs[0]
    _, alone_time = _sequential(g, images[:p], args, *first, "one image per batch", step, step, 0.0)
    _, packed_time = _sequential(g, images[:p], args, *first, "packed", None, step, 0.0)
    return {
        "sigma": sigma,
        "sequential": sequential,
        "cohen": cohen,
        "packing": {
            "mixture": _label(*first), "images": p, "step": step, "batch": args.batch,
            "images_per_s_one_per_batch": p / alone_time, "images_per_s_packed": p / packed_time,
            "speedup": alone_time / packed_time,
        },
    }


def _cohen(args, sigma: float, g, images, labels) -> dict:
    """Cohen's CERTIFY on the first digits, or its figures from ``--cohen-from`` when that run matches."""
    if args.cohen_from:
        old = json.loads(Path(args.cohen_from).read_text())
        same = {k: old.get(k) for k in _COHEN_KEYS} == {k: getattr(args, k) for k in _COHEN_KEYS}
        for s in old["sigmas"] if same else []:
            if s["sigma"] == sigma and s["cohen"]["images"] == len(images) and s["cohen"]["n"] == args.cohen_n:
                source = s["cohen"].get("from", args.cohen_from)  # the run that measured them, however often reused
                return {k: v for k, v in s["cohen"].items() if k != "sequential_on_same_images"} | {"from": source}
        raise SystemExit(f"--cohen-from {args.cohen_from}: no Cohen run with these settings at sigma {sigma}")
    cohen, start = [], time.perf_counter()
    for k in tqdm(range(len(images)), desc=f"cohen n={args.cohen_n} s={sigma}", disable=args.quiet):
        cohen.append(g.certify_full(images[k], args.n0, args.cohen_n, args.alpha, args.batch,
                                    seed=args.seed, index=args.indices[k]))
    correct = np.array([c.prediction == y for c, y in zip(cohen, labels)])
    return {"images": len(images), "n": args.cohen_n, "samples_per_image": args.n0 + args.cohen_n,
            "certified_accuracy": _accuracy(correct, np.array([c.radius for c in cohen]), args.radii),
            "seconds": time.perf_counter() - start}


#: what Cohen's results depend on (with sigma, the digits and n), for --cohen-from
_COHEN_KEYS = ("classifier", "denoiser", "alpha", "radii", "n0", "seed")


def markdown(result: dict) -> str:
    """The README's table: per sigma, Cohen and each mixture on Cohen's digits, then on all digits."""
    radii = [f"{r:g}" for r in result["radii"]]
    lines = ["| sigma | method | images | mean samples / image | fewer than Cohen | certified acc. (%) r = "
             + " / ".join(radii) + " |", "|---|---|---|---|---|---|"]

    def row(sigma, method, images, mean, ratio, accuracy):
        cells = " / ".join(f"{100 * accuracy[r]:.0f}" for r in radii)
        lines.append(f"| {sigma:g} | {method} | {images} | {mean:,.0f} | {ratio} | {cells} |")

    for s in result["sigmas"]:
        cohen = s["cohen"]
        row(s["sigma"], f"Cohen, n = {cohen['n']:,}", cohen["images"], cohen["samples_per_image"], "",
            cohen["certified_accuracy"])
        for label, same in cohen["sequential_on_same_images"].items():
            row(s["sigma"], f"sequential {label}, same digits", cohen["images"], same["mean_samples"],
                f"{same['sample_ratio']:.1f}x", same["certified_accuracy"])
        for label, seq in s["sequential"].items():
            ratio = cohen["samples_per_image"] / seq["mean_samples"]
            row(s["sigma"], f"sequential {label}, all digits", seq["images"], seq["mean_samples"],
                f"{ratio:.1f}x", seq["certified_accuracy"])
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classifier", default="small-cnn.mnist5k", help="classifier spec; {s} = sigma*100, 3 digits")
    p.add_argument("--denoiser", default="dncnn.mnist5k_s{s}_mse", help="denoiser spec or 'none'; {s} as above")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--mixtures", nargs="+", default=["two-sided", "one-sided"], choices=MIXTURES,
                   help="the sequential test's prior(s); each gets its own sequential run")
    p.add_argument("--futility", type=_futility, nargs="+", default=[SEQUENTIAL_FUTILITY], metavar="GAMMA|off",
                   help=f"futility level(s), each with every mixture (default {SEQUENTIAL_FUTILITY})")
    p.add_argument("--images", type=int, default=100, help="evenly spaced mnist5k:test digits")
    p.add_argument("--cohen-images", type=int, default=50, help="the first this many also run Cohen")
    p.add_argument("--cohen-n", type=int, default=100_000)
    p.add_argument("--pack-images", type=int, default=50, help="digits timed one-per-batch vs packed")
    p.add_argument("--max-n", type=int, default=100_000)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--step", type=int, default=SEQUENTIAL_STEP, help="samples before the first check, and at least between two")
    p.add_argument("--growth", type=float, default=SEQUENTIAL_GROWTH, help="later checks growth n apart (0: every step)")
    p.add_argument("--max-step", type=int, default=1000, help="at most this many samples between two checks")
    p.add_argument("--boundary", nargs="+", default=["ville", SEQUENTIAL_BOUNDARY], choices=BOUNDARIES,
                   help="the test's boundary(ies), each with every mixture and futility level")
    p.add_argument("--selection", nargs="+", default=["argmax", SEQUENTIAL_SELECTION], choices=SELECTIONS,
                   help="Cohen's argmax of --n0 draws, or all classes tested at once (each with every other choice)")
    p.add_argument("--pack-step", type=int, default=100, help="the packing timing's check interval")
    p.add_argument("--cohen-from", metavar="JSON", help="reuse Cohen's figures from an earlier result with the same settings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default="benchmarks/results/sequential_mnist.json")
    p.add_argument("--table", metavar="JSON", help="only print the markdown table of an earlier result")
    args = p.parse_args(argv)
    if args.table:
        result = json.loads(Path(args.table).read_text())
        print(markdown(result), end="")
        return result

    torch.set_num_threads(args.threads)
    data = create_dataset("mnist5k:test")
    args.indices = [int(i) for i in np.linspace(0, len(data) - 1, args.images).round()]
    result = {
        "benchmark": "sequential_mnist", "classifier": args.classifier, "denoiser": args.denoiser,
        "alpha": args.alpha, "radii": args.radii, "max_n": args.max_n, "futility": args.futility, "n0": args.n0, "seed": args.seed,
        "step": args.step, "growth": args.growth, "max_step": args.max_step, "boundary": args.boundary,
        "selection": args.selection,
        "threads": args.threads, "platform": platform.platform(), "torch": torch.__version__,
        "sigmas": [run_sigma(args, s, data) for s in args.sigmas],
    }
    write_json(args.out, result, echo=True)
    print(markdown(result), end="")
    return result


if __name__ == "__main__":
    main()
