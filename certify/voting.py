"""DensePure's vote (Xiao et al., ICLR 2023): the base classifier is the majority of f over K reverse-diffusion
runs of one noisy sample, h(x + d) = the most frequent of f(D(x + d; z_1)) ... f(D(x + d; z_K)).

The runs of a stochastic denoiser (a multi-step chain with eta > 0, `denoisers.diffusion.VPDenoiser`) differ
only by their standard-normal chain noise z_k. The protocol: such a denoiser states how many numbers one run
needs per image, ``chain_noise_numbers(sigma, shape) -> int`` (0 when a run is deterministic at that sigma),
and takes them as ``forward(noisy, sigma, chain_noise)`` with ``chain_noise`` of shape (B, numbers), fp32. A
deterministic denoiser stays ``forward(noisy, sigma)`` and draws nothing.

Where the numbers come from: each image's own "vote" stream (`certify.smoothing.stream_seed`), drawn
sample-major: a chunk of ``size`` noisy samples takes the next ``size x K x numbers`` of them, sample j's K
runs together, so an image split into other chunks draws the same numbers (on the CPU when C*H*W is a
multiple of 16, as its smoothing noise does). Results then depend on (seed, index) only, not on the batch,
on the images sharing it or on the process. The z are independent of the smoothing noise d, so
P[h(x + d) = c] over both is a smoothed classifier like any other and Cohen's certificate holds for it.

Cost: forward passes per noisy sample = K x (the denoiser's model calls per run + 1 classifier call).

>>> majority(torch.tensor([2, 1, 2, 1,   3, 3, 0, 1]), votes=4, num_classes=5).tolist()   # a tie: smallest id
[1, 3]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def check_votes(votes: Any) -> int:
    """``votes`` as an int >= 1 (1: no vote), else one line naming it.

    >>> check_votes(10)
    10
    """
    if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1:
        raise ValueError(f"votes must be an int >= 1 (reverse-diffusion runs per noisy sample; 1 = no vote), "
                         f"got {votes!r}")
    return votes


def chain_noise_numbers(denoiser: nn.Module | None, sigma: float, shape: tuple[int, ...]) -> int:
    """Standard-normal numbers one run of ``denoiser`` draws per image of ``shape`` (C, H, W); 0 for a deterministic
    one (no ``chain_noise_numbers``, or a stochastic kind set up deterministically).

    >>> chain_noise_numbers(nn.Identity(), 0.25, (3, 8, 8))
    0
    """
    stated = getattr(denoiser, "chain_noise_numbers", None)
    numbers = stated(float(sigma), tuple(shape)) if callable(stated) else 0
    if isinstance(numbers, bool) or not isinstance(numbers, int) or numbers < 0:
        raise ValueError(f"{type(denoiser).__name__}.chain_noise_numbers returned {numbers!r}; expected an int >= 0")
    return numbers


def deterministic(votes: int, pipeline: str) -> ValueError:
    """The one line that refuses a vote among runs that cannot differ.

    >>> str(deterministic(3, "DnCNN -> ImageClassifier")).startswith("votes=3 needs a stochastic denoiser")
    True
    """
    return ValueError(f"votes={votes} needs a stochastic denoiser whose runs differ, but the runs of {pipeline} are "
                      f"deterministic (its denoiser draws no noise, or it has none): use a diffusion denoiser with a "
                      f"stochastic chain (--denoiser-arg num_steps=2 --denoiser-arg eta=1: DDPM ancestral sampling, "
                      f"as DensePure) or leave votes unset")


def draw_chain_noise(parts: Sequence[tuple[int, torch.Generator | None]], votes: int, numbers: int,
                     device: torch.device) -> torch.Tensor:
    """The chain noise of ``votes`` runs for each part ``(size, generator)``, sample-major: rows ``j * votes + k``
    of the (total * votes, numbers) fp32 result are sample j's run k, drawn from its part's generator.

    >>> z = draw_chain_noise([(2, torch.Generator().manual_seed(0))], votes=3, numbers=16, device=torch.device("cpu"))
    >>> tuple(z.shape), torch.equal(z, torch.randn((6, 16), generator=torch.Generator().manual_seed(0)))
    ((6, 16), True)
    """
    total = sum(size for size, _ in parts)
    out = torch.empty((total, votes, numbers), dtype=torch.float32, device=device)
    at = 0
    for size, generator in parts:
        if generator is None:
            raise ValueError("the denoiser's runs are stochastic: each chunk needs its image's vote stream "
                             "(Smoothed.vote_generator(seed, index, shape)), drawn from nowhere else")
        torch.randn((size, votes, numbers), generator=generator, out=out[at:at + size])
        at += size
    return out.view(total * votes, numbers)


def majority(preds: torch.Tensor, votes: int, num_classes: int) -> torch.Tensor:
    """The vote of each sample among its ``votes`` consecutive class ids in ``preds`` (sample-major): the most
    frequent class; a tie goes to the smallest class id among the most frequent. An id outside
    [0, num_classes) gets no vote (the engine has flagged it and refuses the batch).

    >>> majority(torch.tensor([0, 2, 2,   1, 0, 2]), votes=3, num_classes=3).tolist()
    [2, 0]
    """
    runs = preds.reshape(-1, votes).long()
    slots = torch.where((runs >= 0) & (runs < num_classes), runs, num_classes)
    counts = torch.zeros((runs.shape[0], num_classes + 1), dtype=torch.long, device=runs.device)
    counts.scatter_add_(1, slots, torch.ones_like(slots))
    return counts[:, :num_classes].argmax(dim=1)  # the first of the largest counts: the smallest class id


class Vote:
    """The runs of ``denoiser`` per noisy sample in a pipeline (`certify.smoothing.Smoothed` holds one): how much
    chain noise each draws per image shape, that noise for a batch, and what they cost. ``votes`` > 1 with a
    denoiser that has no stochastic runs is refused here, at assembly, or at the first image shape.

    >>> Vote(None, 0.25, 1, "f").noise(torch.zeros(2, 1, 4, 4), [(2, None)], 1) is None   # nothing drawn
    True
    """

    def __init__(self, denoiser: nn.Module | None, sigma: float, votes: int, pipeline: str) -> None:
        self.denoiser, self.sigma, self.votes, self.pipeline = denoiser, float(sigma), check_votes(votes), pipeline
        if self.votes > 1 and not hasattr(denoiser, "chain_noise_numbers"):
            raise deterministic(self.votes, pipeline)
        self._numbers: dict[tuple[int, ...], int] = {}

    def numbers(self, shape: tuple[int, ...]) -> int:
        """Standard-normal numbers one run draws per image of ``shape`` (C, H, W), asked of the denoiser once."""
        shape = tuple(shape)
        if shape not in self._numbers:
            numbers = chain_noise_numbers(self.denoiser, self.sigma, shape)
            if self.votes > 1 and numbers == 0:
                raise deterministic(self.votes, self.pipeline)
            self._numbers[shape] = numbers
        return self._numbers[shape]

    def noise(self, noisy: torch.Tensor, parts: Sequence[tuple[int, torch.Generator | None]],
              runs: int) -> torch.Tensor | None:
        """The chain noise of ``runs`` runs of each noisy image, its ``parts`` ``(size, generator)`` in order
        (`draw_chain_noise`); None when the runs draw none."""
        numbers = self.numbers(tuple(noisy.shape[1:]))
        return draw_chain_noise(parts, runs, numbers, noisy.device) if numbers else None

    def cost(self) -> dict[str, int]:
        """Forward passes per noisy sample (`cost_per_sample`)."""
        return cost_per_sample(self.denoiser, self.sigma, self.votes)


def cost_per_sample(denoiser: nn.Module | None, sigma: float, votes: int) -> dict[str, int]:
    """Forward passes per noisy sample: ``votes`` runs, each the denoiser's model calls (``network_calls(sigma)``,
    1 when it does not say, 0 without a denoiser) and one classifier call.

    >>> cost_per_sample(None, 0.25, 1)
    {'votes': 1, 'denoiser_calls': 0, 'classifier_calls': 1, 'forward_passes': 1}
    """
    stated = getattr(denoiser, "network_calls", None)
    calls = 0 if denoiser is None else int(stated(float(sigma))) if callable(stated) else 1
    return {"votes": votes, "denoiser_calls": votes * calls, "classifier_calls": votes,
            "forward_passes": votes * (calls + 1)}


def denoise_once(denoiser: nn.Module, noisy: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """One run of ``denoiser`` on a batch, its chain noise (if it draws any) from ``generator``: for looking at
    what a stochastic denoiser does outside the engine (`certify.samples`).

    >>> denoise_once(lambda noisy, sigma: noisy.clamp(0, 1), torch.zeros(2, 1, 4, 4), 0.25, torch.Generator()).shape
    torch.Size([2, 1, 4, 4])
    """
    numbers = chain_noise_numbers(denoiser, sigma, tuple(noisy.shape[1:]))
    if numbers == 0:
        return denoiser(noisy, sigma)
    return denoiser(noisy, sigma, draw_chain_noise([(len(noisy), generator)], 1, numbers, noisy.device))


__all__ = ["Vote", "chain_noise_numbers", "check_votes", "cost_per_sample", "denoise_once", "deterministic",
           "draw_chain_noise", "majority"]
