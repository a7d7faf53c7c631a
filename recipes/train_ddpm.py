"""Train a small DDPM for diffusion denoised smoothing from a YAML config.

    accelerate launch recipes/train_ddpm.py --config recipes/configs/ddpm_mnist5k.yaml

The same library call as ``denoisers.ddpm_training.train_ddpm_from_config``; runs unchanged on a
CPU, one GPU or many (Accelerate), on the same trainer kit as the other recipes: ``--resume``
continues a killed run from its last finished epoch; ``--output-dir``, ``--export-dir``, ``--epochs``
and ``--max-steps`` override the config.
"""

from certify.launch import training_main
from denoisers.ddpm_training import train_ddpm_from_config

if __name__ == "__main__":
    training_main(train_ddpm_from_config, __doc__.splitlines()[0])
