"""denoised-smoothing: certified L2 robustness for any classifier, with a denoiser in front.

>>> from certify import Smoothed, clopper_pearson_lower
>>> round(clopper_pearson_lower(1000, 1000, 0.001), 6)
0.993116
"""

from .registry import Registry, split_spec
from .smoothing import ABSTAIN, Certificate, Smoothed, stream_seed
from .stats import clopper_pearson_lower, max_radius, radius_from_p, two_sided_binomial_pvalue

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN", "Certificate", "Registry", "Smoothed", "clopper_pearson_lower", "max_radius",
    "radius_from_p", "split_spec", "stream_seed", "two_sided_binomial_pvalue",
]
