"""Packing in the sequential mode: forward passes per image, batch fill and images/s, one image per call vs packed.

The same images, seed and settings three ways (`certify.sequential.certify_at_stream`, the function the
sequential mode's run streams through):

- ``one image per call``: each image alone, one check's chunk per forward pass (the run loop before packing);
- ``packed``: every image streamed through one packer, several images' chunks per pass;
- ``packed + look-ahead``: the same, and the room left in a pass goes to the checks after the next one
  (the default of every run).

Batch fill = samples drawn / (passes x batch); drawn includes what the look-ahead drew past a stop, the
certificates count only what they used (``samples used``). The certificates must be identical in all three
(checked, reported as ``identical``). Pipelines: the shipped MNIST ones (small-cnn behind the MSE DnCNN at
each sigma, evenly spaced ``mnist5k:test`` digits) and, with ``--imagenet``, the ImageNet example
(EfficientNet-Lite0 alone on foolbox's 20 photos at 224 px, n = 10,000).

    python benchmarks/sequential_packing.py --images 100 --imagenet --out benchmarks/results/sequential_packing.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchlib import machine_info, write_json
from certify import Smoothed
from certify.data import create_dataset
from certify.modes import SEQUENTIAL_GROWTH, SEQUENTIAL_STEP
from certify.modes.sequential import SEQUENTIAL_BOUNDARY, SEQUENTIAL_FUTILITY, SEQUENTIAL_SELECTION
from certify.sequential import certify_at_stream
from classifiers import create_classifier
from denoisers import create_denoiser

WAYS = ("one image per call", "packed", "packed + look-ahead")


def _row(g: Smoothed, way: str, images: int, used: int, seconds: float, batch: int) -> dict:
    """What a way cost: the pipeline's counters (passes, samples drawn) since they were reset, and its time."""
    return {"way": way, "images": images, "forward_passes": g.passes, "passes_per_image": round(g.passes / images, 2),
            "samples_drawn": g.drawn, "samples_used": used, "batch_fill": round(g.drawn / (g.passes * batch), 4),
            "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 2),
            "samples_per_s": round(used / seconds, 1)}


def _run(g: Smoothed, images: list[torch.Tensor], indices: list[int], args, way: str, n: int, radii: list) -> dict:
    kwargs = dict(alpha=args.alpha, max_n=n, batch_size=args.batch, seed=0, step=SEQUENTIAL_STEP,
                  growth=SEQUENTIAL_GROWTH, mixture=args.mixture, futility=SEQUENTIAL_FUTILITY,
                  boundary=SEQUENTIAL_BOUNDARY, selection=SEQUENTIAL_SELECTION)
    g.passes = g.drawn = 0
    start = time.perf_counter()
    if way == "one image per call":
        results = [next(certify_at_stream(g, [x], radii, indices=[i], look_ahead=False, **kwargs))[1]
                   for x, i in zip(images, indices)]
    else:
        found = {k: r for k, r, _ in certify_at_stream(g, images, radii, indices=indices,
                                                        look_ahead=way.endswith("look-ahead"), **kwargs)}
        results = [found[k] for k in range(len(images))]
    seconds = time.perf_counter() - start
    return {**_row(g, way, len(images), sum(r.n + r.n0 for r in results), seconds, args.batch),
            "certificates": [(r.cA, list(r.certified), r.n) for r in results]}


def _cohen(g: Smoothed, images: list[torch.Tensor], args, n: int) -> dict:
    """Cohen mode's rate on the same pipeline (its CERTIFY packed as its run streams it, n0 = 100): the
    reference for the sequential rows' samples/s (issue 27: a sequential run at >= 60% of it on a GPU)."""
    g.passes = g.drawn = 0
    start = time.perf_counter()
    used = sum(c.n + c.n0 for _, c, _ in g.certify_stream(images, 100, n, args.alpha, args.batch))
    return _row(g, "Cohen mode", len(images), used, time.perf_counter() - start, args.batch)


def _pipelines(args) -> list[tuple[str, Smoothed, list, list]]:
    out = []
    digits = create_dataset("mnist5k:test")
    indices = [int(i) for i in np.linspace(0, len(digits) - 1, args.images).round()]
    for sigma in args.sigmas if args.images else ():
        s = f"{round(sigma * 100):03d}"
        g = Smoothed(create_classifier("small-cnn.mnist5k"), create_denoiser(f"dncnn.mnist5k_s{s}_mse"), sigma=sigma)
        out.append((f"mnist dncnn-mse sigma={sigma}", g.to(args.device), [digits[i][0] for i in indices], indices))
    if args.imagenet:
        photos = create_dataset("foolbox:imagenet", size=224)
        for sigma in (0.12, 0.25):
            g = Smoothed(create_classifier("efficientnet-lite0"), sigma=sigma).to(args.device)
            kept = range(min(args.imagenet_photos, len(photos)))
            out.append((f"imagenet effnet-lite0 sigma={sigma}", g, [photos[i][0] for i in kept], list(kept)))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100, help="evenly spaced mnist5k:test digits (0: none)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--n", type=int, default=100_000, help="the most samples an image may use")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--mixture", default="one-sided")
    p.add_argument("--imagenet", action="store_true", help="also the ImageNet example (n = --imagenet-n)")
    p.add_argument("--imagenet-n", type=int, default=10_000)
    p.add_argument("--imagenet-photos", type=int, default=20, help="the first this many of foolbox's 20 photos")
    p.add_argument("--cohen-images", type=int, default=0,
                   help="also Cohen mode on the first K images of each pipeline (its samples/s, the reference)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/sequential_packing.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name, g, images, indices in _pipelines(args):
        imagenet = name.startswith("imagenet")
        n, radii = (args.imagenet_n, [0.1, 0.25, 0.5, 0.75]) if imagenet else (args.n, args.radii)
        ways = [_run(g, images, indices, args, way, n, radii) for way in WAYS]
        identical = all(w["certificates"] == ways[0]["certificates"] for w in ways)
        for w in ways:
            w.pop("certificates")
        if args.cohen_images:
            ways.append(_cohen(g, images[:args.cohen_images], args, n))
            for w in ways[:-1]:
                w["samples_per_s_vs_cohen"] = round(w["samples_per_s"] / ways[-1]["samples_per_s"], 3)
        for w in ways:
            rows.append({"pipeline": name, "n": n, "radii": radii, **w,
                         "identical": identical if w["way"] in WAYS else None})
            print(f"{name:34s} {w['way']:22s} passes/img {w['passes_per_image']:7.2f}  fill {w['batch_fill']:.3f}  "
                  f"{w['images_per_s']:7.2f} img/s  {w['samples_per_s']:9.1f} samples/s  used {w['samples_used']:,}  "
                  f"drawn {w['samples_drawn']:,}  identical {rows[-1]['identical']}", flush=True)
        result = {"benchmark": "sequential_packing", "machine": machine_info(args.device), "batch": args.batch,
                  "mixture": args.mixture, "rows": rows}
        write_json(args.out, result)  # after each pipeline: a run cut short keeps what it measured
    return result


if __name__ == "__main__":
    main()
