"""Certify a dataset from a YAML config; runs unchanged on a CPU, one GPU or many.

    python recipes/certify_dataset.py --config recipes/configs/certify_mnist5k.yaml
    accelerate launch --multi_gpu --num_processes 8 recipes/certify_dataset.py --config CONFIG.yaml

The config holds run settings by their names (the schema of ``certify.settings``: the flag --x-y of
``dsmooth certify`` is the key x_y) plus ``out`` (and optionally ``device``).
"""

import argparse

from certify.config import read_config
from certify.pipeline import certify_dataset
from certify.settings import settings_from

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", required=True, help="YAML: run settings plus out (and device)")
parser.add_argument("--quiet", action="store_true", help="no progress bars")
args = parser.parse_args()
config = read_config(args.config, what="certify config")
out, device = config.pop("out"), config.pop("device", None)
certify_dataset(settings_from(config), out, device=device, quiet=args.quiet)
