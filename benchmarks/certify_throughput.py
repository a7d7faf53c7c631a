"""Certification throughput against the bare batched forward pass of the same denoiser + classifier.

Three loops over the same number of samples with the same batch size:
- ``forward``: the networks alone on a batch that is already in memory (the ceiling);
- ``engine``: ``Smoothed.sample_counts`` (fp32 noise drawn per batch, argmax, counts on the device);
- ``reference``: a loop in the style of the anchors' code, copying predictions to the host every batch
  and counting them in Python/numpy.

Writes JSON (``--out``). Examples (CPU): ``python benchmarks/certify_throughput.py --model resnet18
--size 64``; with a fresh DnCNN-17 in front of the classifier, ``--denoiser dncnn --size 32``. On a GPU:
``--device cuda --model resnet50 --size 224 --batch 400 --n 8000 --autocast fp32 bf16 --compile off on
--channels-last --out benchmarks/results/certify_throughput_gpu.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from certify import Smoothed
from benchlib import machine_info, write_json
from classifiers import create_classifier
from denoisers import create_denoiser


def _timed(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each loop; the loops take turns, so drift of the machine hits them alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure(args, device: torch.device, autocast: str, compile: bool) -> dict:
    """The three loops for one configuration (precision, compile) of the same network."""
    torch.manual_seed(0)
    clf = create_classifier(f"timm:{args.model}", pretrained=False, num_classes=10).eval().to(device)
    clf.input_size = (args.size, args.size)  # no resize: the net runs at the image size
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[autocast]
    denoiser = None if args.denoiser == "none" else create_denoiser(args.denoiser).eval().to(device)
    g = Smoothed(clf, denoiser, sigma=0.25, autocast_dtype=dtype, channels_last=args.channels_last, compile=compile)
    x = torch.rand(3, args.size, args.size, device=device)
    batches = args.n // args.batch
    noisy = x + 0.25 * torch.randn(args.batch, *x.shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @torch.inference_mode()
    def forward():  # the same networks (precision, layout, compiled) on a batch already in memory
        for _ in range(batches):
            g.base_predict(noisy)
        sync()

    def engine():
        g.sample_counts(x, batches * args.batch, args.batch, torch.Generator(device=device).manual_seed(1))
        sync()

    @torch.inference_mode()
    def reference():  # the anchors' style: noise with randn_like, predictions to the host per batch
        counts = np.zeros(10, dtype=int)
        for _ in range(batches):
            batch = x.repeat(args.batch, 1, 1, 1)
            preds = g.base_predict(batch + torch.randn_like(batch) * 0.25)
            for c in preds.cpu().numpy():
                counts[c] += 1

    t = _timed({"forward": forward, "engine": engine, "reference": reference}, args.repeats)
    return {
        "autocast": autocast, "compile": compile, "channels_last": args.channels_last,
        "ms_per_batch_forward": 1000 * t["forward"] / batches,
        "samples_per_s": {k: batches * args.batch / v for k, v in t.items()},
        "engine_over_forward": t["forward"] / t["engine"],
        "engine_over_reference": t["reference"] / t["engine"],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="timm model name (random weights)")
    p.add_argument("--denoiser", default="none", help="denoiser spec in front, e.g. dncnn (fresh DnCNN-17)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--n", type=int, default=1000, help="samples per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", nargs="+", default=["fp32"], choices=("fp32", "bf16", "fp16"),
                   help="precisions to measure (GPU: fp32 bf16)")
    p.add_argument("--compile", nargs="+", default=["off"], choices=("off", "on"), help="torch.compile off/on")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out", default="benchmarks/results/certify_throughput.json")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    runs = [measure(args, device, a, c == "on") for a in args.autocast for c in args.compile]
    result = {
        "benchmark": "certify_throughput", "model": f"timm:{args.model} (random init)", "denoiser": args.denoiser,
        "image": [3, args.size, args.size], "batch": args.batch, "samples": args.n // args.batch * args.batch,
        "runs": runs, "machine": machine_info(device),
    }
    write_json(args.out, result, echo=True)
    return result


if __name__ == "__main__":
    main()
