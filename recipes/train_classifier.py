"""Train a classifier from a YAML config.

    accelerate launch recipes/train_classifier.py --config recipes/configs/small-cnn_mnist5k.yaml

The same library call as ``classifiers.training.train_classifier_from_config``; runs unchanged on a
CPU, one GPU or many (Accelerate). ``--resume`` continues a killed run from its last finished epoch;
``--output-dir``, ``--export-dir``, ``--epochs`` and ``--max-steps`` override the config.
"""

from certify.launch import training_main
from classifiers.training import train_classifier_from_config

if __name__ == "__main__":
    training_main(train_classifier_from_config, __doc__.splitlines()[0])
