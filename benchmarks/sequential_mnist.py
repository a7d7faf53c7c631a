"""Sample efficiency of anytime-valid sequential certification against Cohen's fixed n, on MNIST.

For each sigma: the pipeline (classifier, denoiser) named by the templates, where ``{s}`` becomes the
sigma in hundredths with three digits (0.25 -> ``025``). Then, on evenly spaced ``mnist5k:test`` digits:
- ``sequential``: :func:`certify.sequential.certify_at_many` on the radius grid (several images per
  batch), once per ``--mixtures`` (the betting test's prior) and ``--futility`` level ("off" or gamma;
  keyed "one-sided" or "one-sided, futility 0.3"), mean samples per image (n0 + n) and certified
  accuracy at each radius;
- ``cohen``: ``Smoothed.certify_full`` with n = ``--cohen-n`` on the first ``--cohen-images`` of those
  digits (it is the expensive one), with the sequential figures on the same digits beside it;
- ``packing``: the first mixture's run with one image per batch (batch = step) and with several
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
from certify.results import write_json
from certify.sequential import MIXTURES, certify_at_many
from certify.settings import SEQUENTIAL_FUTILITY
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


def _label(mixture: str, futility: float | None) -> str:
    return mixture if futility is None else f"{mixture}, futility {futility:g}"


def _sequential(g, images, args, batch_size, step, mixture, futility, desc):
    start = time.perf_counter()
    results = list(tqdm(certify_at_many(g, images, args.radii, args.alpha, args.max_n, batch_size,
                                        seed=args.seed, indices=args.indices, n0=args.n0, step=step,
                                        mixture=mixture, futility=futility),
                        total=len(images), desc=desc, disable=args.quiet))
    return results, time.perf_counter() - start


def run_sigma(args, sigma: float, data) -> dict:
    g = _pipeline(args, sigma)
    images = [data[i][0] for i in args.indices]
    labels = np.array([data[i][1] for i in args.indices])

    m = min(args.cohen_images, len(images))
    sequential, on_cohen_images = {}, {}
    for mixture, futility in [(m, f) for f in args.futility for m in args.mixtures]:
        label = _label(mixture, futility)
        seq, seconds = _sequential(g, images, args, args.batch, args.step, mixture, futility, f"{label} s={sigma}")
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

    cohen, start = [], time.perf_counter()
    for k in tqdm(range(m), desc=f"cohen n={args.cohen_n} s={sigma}", disable=args.quiet):
        cohen.append(g.certify_full(images[k], args.n0, args.cohen_n, args.alpha, args.batch,
                                    seed=args.seed, index=args.indices[k]))
    cohen_time = time.perf_counter() - start
    cohen_correct = np.array([c.prediction == y for c, y in zip(cohen, labels[:m])])
    cohen_radius = np.array([c.radius for c in cohen])

    p = min(args.pack_images, len(images))
    first, futility = args.mixtures[0], args.futility[0]
    _, alone_time = _sequential(g, images[:p], args, args.step, args.step, first, futility, "one image per batch")
    _, packed_time = _sequential(g, images[:p], args, args.batch, args.step, first, futility, "packed")

    return {
        "sigma": sigma,
        "sequential": sequential,
        "cohen": {
            "images": m, "n": args.cohen_n, "samples_per_image": args.n0 + args.cohen_n,
            "certified_accuracy": _accuracy(cohen_correct, cohen_radius, args.radii), "seconds": cohen_time,
            "sequential_on_same_images": on_cohen_images,
        },
        "packing": {
            "mixture": _label(first, futility), "images": p, "step": args.step, "batch": args.batch,
            "images_per_s_one_per_batch": p / alone_time, "images_per_s_packed": p / packed_time,
            "speedup": alone_time / packed_time,
        },
    }


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
    p.add_argument("--futility", type=_futility, nargs="+", default=[None, SEQUENTIAL_FUTILITY], metavar="GAMMA|off",
                   help=f"futility level(s), each with every mixture (default: off and {SEQUENTIAL_FUTILITY})")
    p.add_argument("--images", type=int, default=100, help="evenly spaced mnist5k:test digits")
    p.add_argument("--cohen-images", type=int, default=50, help="the first this many also run Cohen")
    p.add_argument("--cohen-n", type=int, default=100_000)
    p.add_argument("--pack-images", type=int, default=50, help="digits timed one-per-batch vs packed")
    p.add_argument("--max-n", type=int, default=100_000)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--step", type=int, default=100, help="samples per image between two checks")
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
        "threads": args.threads, "platform": platform.platform(), "torch": torch.__version__,
        "sigmas": [run_sigma(args, s, data) for s in args.sigmas],
    }
    write_json(args.out, result, echo=True)
    print(markdown(result), end="")
    return result


if __name__ == "__main__":
    main()
