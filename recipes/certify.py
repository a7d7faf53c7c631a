"""Certify a dataset from a YAML config; runs unchanged on a CPU, one GPU or many.

    python recipes/certify.py --config recipes/configs/certify_mnist.yaml
    accelerate launch --multi_gpu --num_processes 8 recipes/certify.py --config CONFIG.yaml

The config holds the fields of ``certify.runs.RunSettings`` plus ``out`` (and optionally ``device``).
"""

import argparse
import os
import sys

# This script's folder comes first on sys.path, and recipes/certify.py would shadow the library.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import yaml

from certify.runs import RunSettings, certify_dataset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", required=True)
parser.add_argument("--quiet", action="store_true")
args = parser.parse_args()
config = yaml.safe_load(open(args.config))
out, device = config.pop("out"), config.pop("device", None)
certify_dataset(RunSettings.from_dict(config), out, device=device, quiet=args.quiet)
