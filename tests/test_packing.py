"""certify/packing.py: several images' noise chunks share each forward pass, and every image's results are those
it gets alone (the same streams, the same schedule), for the sequential tests and the anytime radius."""

from __future__ import annotations

import torch
from torch import nn

from certify.sequential import certify_anytime, certify_anytime_many, certify_at, certify_at_many
from certify.smoothing import Smoothed

SIGMA = 0.5


def test_packing_does_not_change_results():
    """Several images per batch give exactly the per-image results (same step, same streams)."""
    torch.manual_seed(0)
    g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), sigma=SIGMA, num_classes=3)
    xs = [torch.rand(1, 2, 2) for _ in range(7)]
    packed = list(certify_at_many(g, xs, [0.1, 0.3], 0.01, 600, batch_size=120, seed=3, indices=range(10, 17),
                                  n0=30, step=40))
    alone = [certify_at(g, x, [0.1, 0.3], 0.01, 600, batch_size=40, seed=3, index=i, n0=30)
             for i, x in zip(range(10, 17), xs)]
    assert packed == alone
    packed = list(certify_anytime_many(g, xs, 0.01, 600, batch_size=100, seed=3, n0=30, step=25))
    alone = [certify_anytime(g, x, 0.01, 600, batch_size=25, seed=3, index=i, n0=30) for i, x in enumerate(xs)]
    assert packed == alone
