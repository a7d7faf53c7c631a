"""Compare denoiser/classifier pipelines from a YAML config; runs unchanged on a CPU, one GPU or many.

    python recipes/compare.py --config recipes/configs/demo_mnist.yaml --out reports/demo
    accelerate launch --multi_gpu --num_processes 8 recipes/compare.py --config CONFIG.yaml
"""
import sys

from certify.cli import main

sys.exit(main(["compare", *sys.argv[1:]]))
