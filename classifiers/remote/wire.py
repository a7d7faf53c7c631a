"""The wire format of every remote classifier: the PNG bytes an API receives, and its answer's shape.

What goes over the wire: each noisy image is **clipped to [0,1]**, quantized to 8 bits
(``round(255 x)``) and encoded as a PNG (lossless, deterministic bytes). Smoothing noise is unbounded,
so clipping is what any image format forces; it is part of the base classifier f, applied after the
noise like any other preprocessing, so the certificate stays valid.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch

NONE_LABEL = "none"  # the class of an empty answer, always id 0
Labels = list  # ranked [(name, score), ...], best first


def encode_png(image: torch.Tensor) -> bytes:
    """One image (C, H, W), clipped to [0,1], quantized to uint8 and PNG-encoded (deterministic bytes).

    >>> png = encode_png(torch.full((3, 2, 2), 2.0))
    >>> png[:4], decode_png(png).max().item()
    (b'\\x89PNG', 1.0)
    """
    from PIL import Image

    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (C, H, W) with 1 or 3 channels, got shape {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy().transpose(1, 2, 0)
    pil = Image.fromarray(arr[..., 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> torch.Tensor:
    """PNG bytes back to a float image (C, H, W) in [0,1] (what the API sees)."""
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
