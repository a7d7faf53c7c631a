"""SmoothAdv (Salman et al. 2019): an L2 PGD attack on the smoothed classifier g built on f o D.

A certificate is a lower bound on robustness; an attack gives the upper side. g's votes have no
gradient, so the attack climbs the *soft* smoothed classifier G(x) = E_d[softmax f(D(x + d))]: each
step estimates -log G(x + delta)_y with m noise draws, moves delta along its normalized gradient and
projects it back onto the L2 ball of radius eps and onto images in [0, 1]. Whether g is broken is then
decided by Cohen's PREDICT (n, alpha) at the adversarial point, so "broken" is a statement about g
(wrong with probability <= alpha), not about one noisy sample.

The attack needs gradients through D and f: DnCNN, MemNet, FFDNet and the diffusion denoisers are
differentiable; a remote or hard-label classifier is refused with a clear error (no black-box fallback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .smoothing import Smoothed
from .stats import check_alpha

#: SmoothAdv's settings when none are given: T steps of size 2 eps / T, m noise draws per step, one start
#: from x itself (more restarts begin at random points of the ball).
ATTACK_DEFAULTS = {"steps": 20, "m": 32, "restarts": 1}


@dataclass(frozen=True)
class AttackResult:
    """PREDICT at the clean image and at the adversarial point found for each eps (-1 = abstain).

    ``broken(label)``: PREDICT returned another class, so g is wrong there (up to PREDICT's alpha): the
    attack has shown g is not robust at that eps. An abstention shows nothing either way. ``robust(label)``
    is Salman et al.'s stricter count: PREDICT returned the label (an abstention counts as an error).
    """

    prediction: int
    eps: tuple[float, ...]
    adversarial: tuple[int, ...]
    n: int

    def robust(self, label: int) -> tuple[bool, ...]:
        return tuple(p == label and label >= 0 for p in self.adversarial)

    def broken(self, label: int) -> tuple[bool, ...]:
        return tuple(p not in (label, -1) for p in self.adversarial)


def check_eps(eps: Sequence[float]) -> tuple[float, ...]:
    """The eps grid as floats when it is distinct positive radii in ascending order; else a ValueError.

    >>> check_eps([0.25, 0.5])
    (0.25, 0.5)
    """
    ok = isinstance(eps, (list, tuple)) and eps and all(
        isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e > 0 for e in eps)
    if not ok or list(eps) != sorted(set(eps)):
        raise ValueError(f"eps must be distinct positive radii in ascending order, e.g. [0.25, 0.5], got {list(eps)}")
    return tuple(float(e) for e in eps)


def check_attackable(smoothed: Smoothed) -> None:
    """A clear error for a pipeline the attack cannot take gradients through."""
    if not getattr(smoothed.classifier, "differentiable", True):
        raise ValueError(f"the classifier of {smoothed.describe()} is not differentiable (a remote API answers "
                         f"labels, not gradients): SmoothAdv needs its logits. Attack a local surrogate instead")


def soft_loss(smoothed: Smoothed, images: torch.Tensor, label: int, chunk: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-log G(x)_y estimated on the noisy ``images`` (m, C, H, W), and its gradient with respect to them.

    Computed ``chunk`` images at a time in log space (a logsumexp across chunks), so a large m fits in
    memory and a class probability of 1e-40 still has a gradient. A stochastic denoiser runs once per image,
    its chain noise from ``generator`` (a vote has no gradient: one run is the attack's surrogate).
    """
    parts, grads = [], []
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].detach().requires_grad_(True)
        with torch.enable_grad(), smoothed.evaluating():  # BatchNorm statistics untouched, modes restored
            out = smoothed.base_outputs(part, generator)
            if out.ndim != 2:
                raise ValueError(f"{smoothed.describe()} returns hard labels, not logits: SmoothAdv needs gradients")
            log_p = torch.log_softmax(out.float(), dim=1)[:, label]
            if not torch.isfinite(log_p).all():
                raise smoothed.refuse("the attack's noisy copies")
            total = torch.logsumexp(log_p, dim=0)
            (grad,) = torch.autograd.grad(total, part)
        parts.append(total.detach())
        grads.append(grad)
    totals = torch.stack(parts)
    weights = torch.softmax(totals, dim=0)  # d logsumexp_c(l_c) = sum_c softmax(l)_c d l_c
    grad = torch.cat([w * g for w, g in zip(weights, grads)])
    return -(torch.logsumexp(totals, dim=0) - math.log(len(images))), -grad


def project(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """delta scaled into the L2 ball of radius eps, then x + delta clipped to [0, 1] (which only shrinks it)."""
    norm = float(delta.norm())
    if norm > eps:
        delta = delta * (eps / norm)
    return (x + delta).clamp(0.0, 1.0) - x


def smoothadv(smoothed: Smoothed, x: torch.Tensor, label: int, eps: float, generator: torch.Generator,
              steps: int = ATTACK_DEFAULTS["steps"], step_size: float | None = None, m: int = ATTACK_DEFAULTS["m"],
              restarts: int = ATTACK_DEFAULTS["restarts"], batch_size: int = 1000) -> torch.Tensor:
    """An image x' with ||x' - x||_2 <= eps in [0, 1] that lowers G(x')_label: SmoothAdv PGD.

    Fresh noise every step (an unbiased estimate of the soft classifier's gradient); with several
    restarts, the start whose end point has the highest loss (on fresh noise) wins. Eval mode inside,
    each module's mode restored; no weight changes and no parameter gradients.

    >>> from torch import nn
    >>> f = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> g = Smoothed(f, sigma=0.25, num_classes=2)
    >>> x = torch.full((1, 2, 2), 0.5)
    >>> x_adv = smoothadv(g, x, 0, eps=0.3, generator=torch.Generator().manual_seed(0), steps=5, m=8)
    >>> bool((x_adv - x).norm() <= 0.3 + 1e-6)
    True
    """
    check_attackable(smoothed)
    smoothed.check_counts(steps=steps, m=m, restarts=restarts, batch_size=batch_size)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive L2 radius, got {eps!r}")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < smoothed.num_classes:
        raise ValueError(f"label must be a class id in [0, {smoothed.num_classes}), got {label!r}")
    x = smoothed.check_input(x)
    step_size = 2.0 * eps / steps if step_size is None else step_size
    best, best_loss = x, -math.inf
    with torch.enable_grad(), smoothed.evaluating():
        for restart in range(restarts):
            delta = torch.zeros_like(x)
            if restart > 0:  # a uniform point of the ball: a random direction, radius eps * U^(1/d)
                direction = torch.randn(x.shape, generator=generator, device=x.device)
                u = torch.rand((), generator=generator, device=x.device)
                delta = project(x, direction / direction.norm() * eps * u ** (1.0 / x.numel()), eps)
            for _ in range(steps):
                noise = torch.randn((m, *x.shape), generator=generator, device=x.device) * smoothed.sigma
                _, grad = soft_loss(smoothed, x + delta + noise, label, batch_size, generator)
                grad = grad.sum(dim=0)  # d/d delta of the loss: every noisy copy moves with delta
                norm = float(grad.norm())
                if not math.isfinite(norm):
                    raise smoothed.refuse("the attack's gradient")
                if norm > 0:
                    delta = project(x, delta + step_size * grad / norm, eps)
            noise = torch.randn((m, *x.shape), generator=generator, device=x.device) * smoothed.sigma
            loss = float(soft_loss(smoothed, x + delta + noise, label, batch_size, generator)[0])
            if loss > best_loss:
                best, best_loss = (x + delta).clamp(0.0, 1.0), loss
    return best.detach()


def attack_full(smoothed: Smoothed, x: torch.Tensor, label: int, eps: Sequence[float], n: int, alpha: float,
                batch_size: int, seed: int = 0, index: int = 0, steps: int = ATTACK_DEFAULTS["steps"],
                step_size: float | None = None, m: int = ATTACK_DEFAULTS["m"],
                restarts: int = ATTACK_DEFAULTS["restarts"]) -> AttackResult:
    """PREDICT at x and at a SmoothAdv point for each eps (ascending), all on the image's streams.

    Once g is broken at some eps (PREDICT returns another class, at x itself or at a point found for a
    smaller eps), that point also lies in every larger ball: it is reused there, with the same PREDICT
    answer, instead of attacking again. ``step_size`` None means 2 eps / steps.

    >>> from torch import nn
    >>> f = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> r = attack_full(Smoothed(f, sigma=0.25, num_classes=2), torch.full((1, 2, 2), 0.5), 0, [0.1, 0.2],
    ...                 n=100, alpha=0.001, batch_size=100, steps=3, m=4)
    >>> r.eps, len(r.adversarial)
    ((0.1, 0.2), 2)
    """
    eps = check_eps(list(eps))
    smoothed.check_counts(n=n, batch_size=batch_size, steps=steps, m=m, restarts=restarts)
    if step_size is not None and not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number (or unset for 2 eps / steps), got {step_size!r}")
    check_alpha(alpha)
    check_attackable(smoothed)
    clean = smoothed.predict_full(x, n, alpha, batch_size, seed=seed, index=index).prediction
    generator = smoothed.generator(seed, index, "attack")
    answers, fallen = [], clean if clean not in (label, -1) else None
    for e in eps:
        answer = fallen
        if fallen is None:
            x_adv = smoothadv(smoothed, x, label, e, generator, steps=steps, step_size=step_size, m=m,
                              restarts=restarts, batch_size=batch_size)
            answer = smoothed.predict_full(x_adv, n, alpha, batch_size, seed=seed, index=index).prediction
            fallen = answer if answer not in (label, -1) else None
        answers.append(answer)
    return AttackResult(clean, eps, tuple(answers), n)


__all__ = ["ATTACK_DEFAULTS", "AttackResult", "attack_full", "check_attackable", "check_eps", "project", "smoothadv", "soft_loss"]
