"""denoised-smoothing: certified L2 robustness for any classifier, with a denoiser in front.

The names below load on first use, so that ``import certify.stats`` (the statistics layer) needs NumPy and
SciPy only, not torch.

>>> from certify import Smoothed, clopper_pearson_lower
>>> round(clopper_pearson_lower(1000, 1000, 0.001), 6)
0.993116
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_WHERE = {
    "ABSTAIN": "stats", "Certificate": "stats", "clopper_pearson_lower": "stats", "max_radius": "stats",
    "radius_from_p": "stats", "two_sided_binomial_pvalue": "stats",
    "Registry": "registry", "split_spec": "registry",
    "Smoothed": "smoothing", "stream_seed": "smoothing",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'certify' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
