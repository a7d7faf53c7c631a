"""Certification throughput against the bare batched forward pass of the same base classifier.

Three loops over the same number of samples with the same batch size:
- ``forward``: the network alone on a batch that is already in memory (the ceiling);
- ``engine``: ``Smoothed.sample_counts`` (fp32 noise drawn per batch, argmax, counts on the device);
- ``reference``: a loop in the style of the anchors' code, copying predictions to the host every batch
  and counting them in Python/numpy.

Writes JSON (``--out``). Example: ``python benchmarks/certify_throughput.py --model resnet18 --size 64``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from certify import Smoothed
from classifiers import create_classifier


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="timm model name (random weights)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--n", type=int, default=1000, help="samples per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/certify_throughput.json")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    clf = create_classifier(f"timm:{args.model}", pretrained=False, num_classes=10).eval()
    clf.input_size = (args.size, args.size)  # no resize: the net runs at the image size
    g = Smoothed(clf, sigma=0.25)
    x = torch.rand(3, args.size, args.size)
    batches = args.n // args.batch
    noisy = x + 0.25 * torch.randn(args.batch, *x.shape)

    @torch.inference_mode()
    def forward():
        for _ in range(batches):
            clf(noisy).argmax(1)

    def engine():
        g.sample_counts(x, args.n, args.batch, torch.Generator().manual_seed(1))

    @torch.inference_mode()
    def reference():
        counts = np.zeros(10, dtype=int)
        for _ in range(batches):
            batch = x.repeat(args.batch, 1, 1, 1)
            preds = clf(batch + torch.randn_like(batch) * 0.25).argmax(1)
            for c in preds.cpu().numpy():
                counts[c] += 1

    t = {name: _timed(fn, args.repeats) for name, fn in
         (("forward", forward), ("engine", engine), ("reference", reference))}
    result = {
        "benchmark": "certify_throughput",
        "model": f"timm:{args.model} (random init)", "image": [3, args.size, args.size],
        "batch": args.batch, "samples": batches * args.batch,
        "ms_per_batch_forward": 1000 * t["forward"] / batches,
        "samples_per_s": {k: batches * args.batch / v for k, v in t.items()},
        "engine_over_forward": t["forward"] / t["engine"],
        "engine_over_reference": t["reference"] / t["engine"],
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": "cpu"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
