"""Train a denoiser from a YAML config.

    accelerate launch recipes/train_denoiser.py --config recipes/configs/dncnn_mnist5k_s025_mse.yaml

The same library call as ``dsmooth train-denoiser``; runs unchanged on a CPU, one GPU or many (Accelerate).
``--resume`` continues a killed run from its last finished epoch; ``--output-dir``, ``--export-dir``,
``--epochs`` and ``--max-steps`` override the config.
"""

import argparse
import logging

from certify.launch import add_training_args, training_overrides
from denoisers.training import train_from_config

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(train_from_config(args.config, resume=args.resume, overrides=training_overrides(args)))
