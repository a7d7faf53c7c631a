"""The cost of Carlini et al.'s ImageNet pipeline: ADM-256 (guided-diffusion) + BEiT-large/16-512, per image.

Both networks are built with their exact architectures and random weights (the cost does not depend
on the weights): ``adm`` with ``preset=imagenet256-uncond`` and ``timm:beit_large_patch16_512``. For each
configuration (fp32, bf16, bf16 + torch.compile, bf16 + channels_last) it finds the largest batch that
fits (``Smoothed.find_batch_size``), times ``Smoothed.sample_counts`` (noise, one-shot denoising at
sigma's t*, the classifier, the counts) and reports samples/s, seconds per image in Cohen's mode at
n0 + n = 100 + 10,000 samples (the paper's: 469 s on one A100, fp32), and the expected seconds per
image in sequential mode at the mean sample counts measured by ``benchmarks/sequential_mnist.py``.
Then the end-to-end sequential row (`RecordedVotes`): 20 photos whose votes follow the vote rates recorded
on real ImageNet photos (``benchmarks/data/imagenet_n10k_rates.json``), packed as the run loop packs them,
the cost networks run on every sample: seconds per image, samples, forward passes and batch fill.

GPU: ``python benchmarks/dds_cost.py --device cuda`` (writes benchmarks/results/dds_cost.json).
Smoke run on a CPU: ``python benchmarks/dds_cost.py --tiny --samples 8 --out /tmp/dds.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from certify import Smoothed
from benchlib import machine_info, write_json
from classifiers import create_classifier
from denoisers.adm import ADMDenoiser, adm_flags, build_adm, use_fused_attention

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"fp32": (None, False, False), "bf16": (torch.bfloat16, False, False),
           "bf16+compile": (torch.bfloat16, True, False), "bf16+channels_last": (torch.bfloat16, False, True)}
TINY_ADM = dict(image_size=64, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="32",
                num_head_channels=16, learn_sigma=True)


#: the sequential benchmark's row for the README's command (one-sided, the CLI's futility, boundary, selection)
SEQUENTIAL_ROW = "one-sided, futility 0.3, exact, all classes"


def sequential_sample_counts(path: Path, row: str = SEQUENTIAL_ROW) -> dict[str, float]:
    """Mean samples per image of the sequential benchmark's ``row``, per sigma, if it was run."""
    if not path.is_file():
        return {}
    result = json.loads(path.read_text())
    return {str(s["sigma"]): s["sequential"][row]["mean_samples"] for s in result["sigmas"] if row in s["sequential"]}


def pipeline(args, device: torch.device, config: str) -> Smoothed:
    autocast, compile, channels_last = CONFIGS[config]
    flags = adm_flags(**TINY_ADM) if args.tiny else adm_flags("imagenet256-uncond")
    torch.manual_seed(0)
    model, diffusion = build_adm(flags)
    if not args.einsum_attention:  # as create_adm builds it
        use_fused_attention(model)
    denoiser = ADMDenoiser(model.eval(), diffusion, flags).to(device)
    classifier = create_classifier(args.classifier, pretrained=False).eval().to(device)
    return Smoothed(classifier, denoiser, sigma=args.sigma, autocast_dtype=autocast, compile=compile,
                    channels_last=channels_last)


def measure(args, device: torch.device, config: str, sequential: dict[str, float]) -> dict:
    g = pipeline(args, device, config)
    size = g.denoiser.sample_size
    x = torch.rand(3, *size, device=device)
    batch = g.find_batch_size(tuple(x.shape), limit=args.max_batch) if args.batch == "auto" else int(args.batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples = max(batch, args.samples // batch * batch)
    g.sample_counts(x, batch, batch, torch.Generator(device=device).manual_seed(0))  # warm-up (and compile)
    sync()
    start = time.perf_counter()
    g.sample_counts(x, samples, batch, torch.Generator(device=device).manual_seed(1))
    sync()
    seconds = time.perf_counter() - start
    rate = samples / seconds
    return {
        "config": config, "batch": batch, "samples": samples, "samples_per_s": rate,
        "seconds_per_image_cohen": (args.n0 + args.n) / rate,
        "seconds_per_image_sequential": {s: count / rate for s, count in sequential.items()},
    }


class RecordedVotes(Smoothed):
    """The cost pipeline with the votes of a real run: every sample goes through the denoiser and the classifier
    (the cost), but the class it votes for is drawn from its photo's recorded rate (the top class with
    probability ``rate``, else the runner-up class), from the photo's own generator: the sequential tests then
    stop as they would on those photos, and the packer packs them as the run loop does."""

    def __init__(self, *args, rates: dict[int, tuple[int, float]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rates = rates  # id of the photo's image tensor -> (top class, rate)

    def sample_batch(self, chunks, out=None):
        _, bad = super().sample_batch(chunks, out=out)  # the networks' cost, on every sample
        counts = torch.zeros(len(chunks), self.num_classes, dtype=torch.long, device=chunks[0][0].device)
        for k, (x, size, generator, *_) in enumerate(chunks):  # a Chunk: its vote stream unused
            top, rate = self.rates[id(x)]
            hits = int((torch.rand(size, generator=generator, device=x.device) < rate).sum())
            counts[k, top], counts[k, (top + 1) % self.num_classes] = hits, size - hits
        return counts, bad


def measure_sequential(args, device: torch.device, config: str, rates: list[dict]) -> dict:
    """Seconds per photo of a packed sequential run whose votes follow ``rates`` (the run loop's packing)."""
    from certify.modes import SEQUENTIAL_GROWTH, SEQUENTIAL_STEP
    from certify.modes.sequential import SEQUENTIAL_BOUNDARY, SEQUENTIAL_FUTILITY, SEQUENTIAL_SELECTION
    from certify.sequential import certify_at_stream

    base = pipeline(args, device, config)
    size = base.denoiser.sample_size
    photos = [torch.rand(3, *size, device=device) for _ in rates]
    g = RecordedVotes(base.classifier, base.denoiser, sigma=args.sigma, autocast_dtype=base.autocast_dtype,
                      channels_last=base.channels_last, rates={id(x): (r["top"], r["rate"]) for x, r in zip(photos, rates)})
    g._networks = base._networks  # the same (compiled) networks
    batch = g.find_batch_size(tuple(photos[0].shape), limit=args.max_batch) if args.batch == "auto" else int(args.batch)
    radii = [r * args.sigma for r in (0.5, 1.0, 2.0)]  # Carlini et al.'s grid relative to sigma
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g.sample_counts(photos[0], batch, batch, torch.Generator(device=device).manual_seed(0))  # warm-up (and compile)
    sync()
    g.passes = g.drawn = 0
    start = time.perf_counter()
    results = list(certify_at_stream(g, photos, radii, args.alpha, max_n=args.sequential_n, batch_size=batch,
                                     step=min(SEQUENTIAL_STEP, batch),
                                     growth=SEQUENTIAL_GROWTH, mixture="one-sided", futility=SEQUENTIAL_FUTILITY,
                                     boundary=SEQUENTIAL_BOUNDARY, selection=SEQUENTIAL_SELECTION))
    sync()
    seconds = time.perf_counter() - start
    used = sum(r.n + r.n0 for _, r, _ in results)
    return {"config": config, "mode": "sequential (recorded rates)", "photos": len(photos), "batch": batch,
            "radii": radii, "seconds_per_image": seconds / len(photos), "samples_used_per_image": used / len(photos),
            "passes_per_image": g.passes / len(photos), "batch_fill": g.drawn / (g.passes * batch),
            "certified": [sum(r.certified[k] for _, r, _ in results) for k in range(len(radii))]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classifier", default=None,
                   help="classifier spec (random init); default timm:beit_large_patch16_512 (timm:resnet18 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a tiny 64 px ADM (smoke test), not the 552M-parameter one")
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--einsum-attention", action="store_true",
                   help="guided-diffusion's own einsum attention instead of torch's fused scaled_dot_product_attention")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS),
                   help="Cohen-mode rates to measure, in this order (none: only the sequential row)")
    p.add_argument("--batch", default="auto", help="'auto' (largest that fits) or an int")
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--samples", type=int, default=2000, help="samples per measurement")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sequential-json", default=str(ROOT / "benchmarks/results/sequential_mnist.json"))
    p.add_argument("--rates", default=str(ROOT / "benchmarks/data/imagenet_n10k_rates.json"),
                   help="recorded vote rates per photo: the end-to-end sequential row ('none' to skip it)")
    p.add_argument("--rates-sigma", default="0.25", help="which sigma's recorded rates")
    p.add_argument("--photos", type=int, default=20, help="photos in the sequential row (at most the recorded ones)")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--sequential-n", type=int, default=10_000, help="the most samples a photo may use (sequential row)")
    p.add_argument("--sequential-configs", nargs="*", default=["bf16"], choices=list(CONFIGS))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/dds_cost.json"))
    args = p.parse_args(argv)
    args.classifier = args.classifier or ("timm:resnet18" if args.tiny else "timm:beit_large_patch16_512")

    device = torch.device(args.device)
    sequential = sequential_sample_counts(Path(args.sequential_json))
    result = {
        "benchmark": "dds_cost", "denoiser": "adm tiny 64 px" if args.tiny else "adm preset=imagenet256-uncond",
        "attention": "einsum" if args.einsum_attention else "fused (scaled_dot_product_attention)",
        "classifier": f"{args.classifier} (random init)", "sigma": args.sigma, "n0": args.n0, "n": args.n,
        "published": {"seconds_per_image_cohen": 469, "hardware": "one A100, fp32 (Carlini et al. 2023)"},
        "sequential_sample_counts": {"source": args.sequential_json, "mean_samples": sequential},
        "runs": [], "machine": machine_info(device),
    }
    rates = [] if args.rates == "none" else json.loads(Path(args.rates).read_text())["sigmas"][args.rates_sigma][:args.photos]

    def keep(run: dict) -> None:  # the JSON after each: a run cut short by a time limit keeps what it measured
        result["runs"].append(run)
        write_json(args.out, result)

    for config in args.configs:
        keep(measure(args, device, config, sequential))
    for config in args.sequential_configs if rates else ():
        keep(measure_sequential(args, device, config, rates))
    write_json(args.out, result, echo=True)
    return result


if __name__ == "__main__":
    main()
