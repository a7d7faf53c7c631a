"""Certify a dataset from a YAML config; runs unchanged on a CPU, one GPU or many.

    python recipes/certify_dataset.py --config recipes/configs/certify_mnist5k.yaml
    accelerate launch --multi_gpu --num_processes 8 recipes/certify_dataset.py --config CONFIG.yaml

The config holds run settings by their names (the schema of ``certify.settings``: the flag --x-y of
``dsmooth certify`` is the key x_y) plus ``out`` (and optionally ``device``). A mistake in it is one line.
"""

import argparse
import sys

from certify.config import read_config
from certify.errors import run_command
from certify.pipeline import certify_dataset
from certify.settings import settings_from


def certify(path: str, quiet: bool) -> None:
    config = read_config(path, what="certify config")
    if not isinstance(config.get("out"), str):
        raise ValueError(f"{path}: the config needs out: the result file (a .tsv), got {config.get('out')!r}")
    out, device = config.pop("out"), config.pop("device", None)
    try:
        settings = settings_from(config)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    print(f"wrote {certify_dataset(settings, out, device=device, quiet=quiet)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML: run settings plus out (and device)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    sys.exit(run_command("certify_dataset.py", lambda: certify(args.config, args.quiet)))
