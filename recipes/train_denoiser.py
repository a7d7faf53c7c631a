"""Train a denoiser from a YAML config: ``accelerate launch recipes/train_denoiser.py --config FILE.yaml``.

The same library call as ``dsmooth train-denoiser --config FILE.yaml``; runs unchanged on a CPU, one
GPU or many, and ``--resume`` continues a killed run from its last finished epoch.
"""

import argparse
import logging
import os
import sys

# Python puts this script's folder first on sys.path; a recipe named like a package
# (recipes/certify.py) would then shadow the library. Recipes import the library, never each other.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from denoisers.training import train_from_config

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML training config (see recipes/configs/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the config's output_dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(train_from_config(args.config, resume=args.resume))
