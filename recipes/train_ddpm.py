"""Train a small DDPM for diffusion denoised smoothing.

    accelerate launch recipes/train_ddpm.py --config recipes/configs/ddpm_mnist5k.yaml [--resume]

Runs unchanged on a CPU, one GPU or several (Accelerate); everything is in the config.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where recipes/certify.py would shadow the
# `certify` package; the recipes import the installed library only.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from denoisers.ddpm_training import train_ddpm_from_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training YAML, e.g. recipes/configs/ddpm_mnist5k.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from work_dir/checkpoint")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(train_ddpm_from_config(args.config, resume=args.resume))


if __name__ == "__main__":
    main()
