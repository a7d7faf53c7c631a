"""What every part of the engine and its users share: sigma's one rule, the precisions a network may run in,
each image's random streams, and the errors the engine raises about what the networks return.

>>> check_sigma(0.25), sorted(PRECISIONS)
(0.25, ['bf16', 'fp16', 'fp32'])
"""

from __future__ import annotations

import hashlib
import logging
import math

import torch

log = logging.getLogger(__name__)

#: the precisions a network may run in, by name (the noise is always drawn and added in fp32)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Noise levels are [0,1] pixel units: the papers use 0.12 to 1.0. Far above 1 every class is noise (a
#: warning); above SIGMA_MAX the run is refused (fp32 noise would overflow long before 1e39 anyway).
SIGMA_WARN, SIGMA_MAX = 2.0, 100.0


def check_sigma(sigma: float) -> float:
    """``sigma`` as a float if it is a usable noise level; a clear error otherwise, a warning if absurd.

    >>> check_sigma(0.25)
    0.25
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive, finite number (noise std in [0,1] pixel units), got {sigma!r}")
    if sigma > SIGMA_MAX:
        raise ValueError(f"sigma={sigma!r} is far beyond any meaningful noise level for images in [0,1] "
                         f"(the papers use 0.12 to 1.0); the largest accepted is {SIGMA_MAX:g}")
    if sigma > SIGMA_WARN:
        log.warning("sigma=%g is far outside [0,1] pixel units (the papers use 0.12 to 1.0): the noise drowns "
                    "every image and nearly everything will abstain; images are in [0,1], not [0,255]", sigma)
    return float(sigma)


class NonFiniteOutput(ValueError):
    """The networks returned NaN/inf (or an impossible class id, or a denoiser left [0, 1]): counting argmax of
    NaN would certify garbage (behind a remote API, NaN images become black PNGs that all get one label)."""


class PluginOutputError(ValueError):
    """A denoiser or classifier returned a tensor of the wrong shape or type for the pipeline."""

#: the purposes an image's randomness is drawn for, each its own stream
STREAMS = ("selection", "estimation", "prediction", "sequential", "attack", "vote")


def stream_seed(seed: int, index: int, stream: str) -> int:
    """A 63-bit seed for one image's random stream, derived from (run seed, image index, purpose).

    Streams never overlap between images or purposes, so an image's result does not depend on which
    images ran before it, nor on which process ran it.

    >>> stream_seed(0, 7, "selection") == stream_seed(0, 7, "selection") != stream_seed(0, 7, "estimation")
    True
    """
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    digest = hashlib.blake2b(f"{int(seed)}/{int(index)}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


__all__ = ["PRECISIONS", "SIGMA_MAX", "SIGMA_WARN", "STREAMS", "NonFiniteOutput", "PluginOutputError", "check_sigma",
           "stream_seed"]
