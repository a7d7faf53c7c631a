"""Certify a dataset from a YAML config; runs unchanged on a CPU, one GPU or many.

    python recipes/certify_dataset.py --config recipes/configs/certify_mnist5k.yaml
    accelerate launch --multi_gpu --num_processes 8 recipes/certify_dataset.py --config CONFIG.yaml

The config holds the fields of ``certify.runs.RunSettings`` plus ``out`` (and optionally ``device``).
"""

import argparse

import yaml

from certify.runs import RunSettings, certify_dataset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", required=True, help="YAML: RunSettings fields plus out (and device)")
parser.add_argument("--quiet", action="store_true", help="no progress bars")
args = parser.parse_args()
with open(args.config) as fh:
    config = yaml.safe_load(fh)
out, device = config.pop("out"), config.pop("device", None)
certify_dataset(RunSettings.from_dict(config), out, device=device, quiet=args.quiet)
