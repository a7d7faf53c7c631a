"""Certification samples per second with 1 and K processes (``accelerate launch``), same total threads.

Each run certifies the same digits with the shipped MNIST pipeline through ``dsmooth certify``; the
K-process run must produce the same TSV (apart from ``time``), which is checked too. Writes JSON.

    python benchmarks/distributed_throughput.py --processes 2 --images 20 --n 2000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine_info, write_json


def _run(processes: int, threads: int, out: Path, args) -> float:
    cli = ["certify", "--classifier", args.classifier, "--denoiser", args.denoiser, "--dataset", "mnist5k:test",
           "--sigma", str(args.sigma), "--n0", "100", "--n", str(args.n), "--batch", str(args.batch),
           "--skip", str(1000 // args.images), "--max", str(1000 // args.images * args.images), "--out", str(out),
           "--quiet"]
    launch = ([sys.executable, "-m", "certify.cli"] if processes == 1 else
              [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "certify.cli"])
    start = time.perf_counter()
    subprocess.run(launch + cli, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                   capture_output=True)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="total CPU threads, split across processes")
    p.add_argument("--classifier", default="small-cnn.mnist5k")
    p.add_argument("--denoiser", default="dncnn.mnist5k_s025_mse")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--out", default="benchmarks/results/distributed_throughput.json")
    args = p.parse_args(argv)
    samples = args.images * (args.n + 100)
    with tempfile.TemporaryDirectory() as tmp:
        one = _run(1, args.threads, Path(tmp) / "one.tsv", args)
        many = _run(args.processes, max(1, args.threads // args.processes), Path(tmp) / "many.tsv", args)
        strip = lambda path: [l.split("\t")[:5] + l.split("\t")[6:] for l in path.read_text().splitlines()]  # noqa: E731
        identical = strip(Path(tmp) / "one.tsv") == strip(Path(tmp) / "many.tsv")
    result = {
        "benchmark": "distributed_throughput", "pipeline": f"{args.classifier} + {args.denoiser}",
        "images": args.images, "samples": samples, "total_threads": args.threads,
        "wall_s": {"1": one, str(args.processes): many},
        "samples_per_s": {"1": samples / one, str(args.processes): samples / many},
        "identical_tsv": identical,
        "note": "wall time includes process start-up and model loading (a few seconds per process)",
        "machine": machine_info(),
    }
    write_json(args.out, result, echo=True)
    return result


if __name__ == "__main__":
    main()
