"""Train a denoiser from a YAML config.

    accelerate launch recipes/train_denoiser.py --config recipes/configs/dncnn_mnist5k_s025_mse.yaml

The same library call as ``dsmooth train-denoiser``; runs unchanged on a
CPU, one GPU or many (Accelerate). ``--resume`` continues a killed run from its last finished epoch;
``--output-dir``, ``--export-dir``, ``--epochs`` and ``--max-steps`` override the config.
"""

from certify.launch import training_main
from denoisers.training import train_from_config

if __name__ == "__main__":
    training_main(train_from_config, __doc__.splitlines()[0])
