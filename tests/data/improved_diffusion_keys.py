"""Regenerates improved_diffusion_cifar10_keys.json: the state-dict layout of improved-diffusion's CIFAR-10 model.

The layout comes from the published model code, not from ours: run it where openai/improved-diffusion is
importable (``pip install git+https://github.com/openai/improved-diffusion``), with the flags of
``cifar10_uncond_50M_500K.pt`` from that repository's README:

    python tests/data/improved_diffusion_keys.py > tests/data/improved_diffusion_cifar10_keys.json
"""

import json

import torch
from improved_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

FLAGS = dict(image_size=32, num_channels=128, num_res_blocks=3, learn_sigma=True, dropout=0.3,
             diffusion_steps=4000, noise_schedule="cosine")

if __name__ == "__main__":
    torch.set_default_device("meta")  # the layout only; nothing is allocated
    model, diffusion = create_model_and_diffusion(**{**model_and_diffusion_defaults(), **FLAGS})
    print(json.dumps({
        "source": "openai/improved-diffusion improved_diffusion.script_util.create_model_and_diffusion",
        "flags": FLAGS, "rescale_timesteps": diffusion.rescale_timesteps,
        "keys": {k: list(v.shape) for k, v in model.state_dict().items()},
    }, indent=1))
