"""PSNR of the shipped MNIST DDPM told the noise level by the ``first`` and the ``exact`` timestep rule.

The demo's digits (``mnist5k:test`` indices 0, 33, 66, ..., 30 of them), ``--draws`` noise draws each at
every sigma, the same noise for both rules; mean per-image PSNR (dB) of the denoised image against the
clean digit, with the timestep each rule chooses. Certified accuracy of both rules:
``recipes/configs/ddpm_timestep_rule.yaml``.

    python benchmarks/timestep_rule.py --out benchmarks/results/timestep_rule.json
"""

from __future__ import annotations

import argparse
import time

import torch

from certify.data import create_dataset
from benchlib import write_json
from denoisers import create_denoiser


def psnr(estimate: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(((estimate - clean) ** 2).mean(dim=(1, 2, 3)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--draws", type=int, default=20, help="noise draws per digit")
    p.add_argument("--out", default="benchmarks/results/timestep_rule.json")
    args = p.parse_args(argv)
    data = create_dataset("mnist5k:test")
    clean = torch.stack([data[i][0] for i in range(0, 30 * 33, 33)]).repeat(args.draws, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    rows, start = [], time.time()
    for sigma in args.sigmas:
        noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
        row = {"sigma": sigma, "images": len(clean), "psnr_noisy": float(psnr(noisy.clamp(0, 1), clean).mean())}
        for rule in ("first", "exact"):
            den = create_denoiser("ddpm.mnist5k", timestep_rule=rule)
            with torch.inference_mode():
                row[f"psnr_{rule}"] = float(psnr(den(noisy, sigma), clean).mean())
            row[f"t_{rule}"], row[f"implied_sigma_{rule}"] = den.timestep(sigma), den.implied_sigma(sigma)
        print(row, flush=True)
        rows.append(row)
    result = {"benchmark": "timestep_rule", "denoiser": "ddpm.mnist5k", "draws": args.draws, "rows": rows,
              "seconds": round(time.time() - start, 1)}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
