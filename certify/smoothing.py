"""The smoothed classifier g(x) = argmax_c P[f(D(x + d)) = c], d ~ N(0, sigma^2 I).

CERTIFY and PREDICT follow Cohen, Rosenfeld and Kolter (2019), with f o D as the base classifier
(Salman et al. 2020). The engine knows only modules and tensors: no plugin, dataset or CLI code.
"""

from __future__ import annotations

import contextlib
import itertools
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .packing import Chunk, Draws, run_packed
from .rules import PRECISIONS, NonFiniteOutput, PluginOutputError, check_sigma, stream_seed  # noqa: F401 (public here too)
from .stats import ABSTAIN, BOUNDS, Certificate, certificate, check_alpha, two_sided_binomial_pvalue
from .voting import Vote, majority


@dataclass(frozen=True)
class Prediction:
    """What PREDICT found for one image: the class (or -1), the top two counts, the samples drawn."""

    prediction: int
    nA: int
    nB: int
    n: int


class Smoothed(nn.Module):
    """A smoothed classifier around ``classifier`` (optionally behind ``denoiser``) at noise ``sigma``.

    ``classifier`` takes [0,1] images and returns logits (B, K) or hard labels (B,); ``denoiser``
    maps ``(noisy, sigma)`` to [0,1] images. Noise is drawn and added in fp32 in [0,1] pixel space.
    GPU fast path, all off by default so the CPU path stays exact fp32: ``autocast_dtype`` (e.g.
    ``torch.bfloat16``) lowers only the precision of the networks; ``channels_last`` stores the
    networks and the noisy batches in NHWC; ``compile`` runs f o D through ``torch.compile`` (a string
    names its backend: ``"aot_eager"`` traces without generating code, as the tests do on a CPU).
    A denoiser may define ``prepare(sigma: float) -> None``: it is called once here, at assembly, to
    choose what depends on sigma (a diffusion model's timestep and scales) as plain Python numbers, so
    that a compiled forward only looks them up; the denoiser must still be correct when called eagerly
    at another sigma. ``votes`` = K > 1: DensePure's vote, f's majority over K runs of a stochastic denoiser per
    noisy sample, each run's chain noise from the image's own "vote" stream (`certify.voting`); a stochastic
    denoiser draws from that stream with K = 1 too, a deterministic one draws nothing.

    >>> torch.manual_seed(0) is not None
    True
    >>> f = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> g = Smoothed(f, sigma=0.25, num_classes=2)
    >>> cls, radius = g.certify(torch.full((1, 2, 2), 0.5), n0=10, n=100, alpha=0.001, batch_size=50)
    >>> cls in (-1, 0, 1) and radius >= 0
    True
    """

    def __init__(
        self,
        classifier: nn.Module,
        denoiser: nn.Module | None = None,
        sigma: float = 0.25,
        num_classes: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compile: bool | str = False,
        votes: int = 1,
    ) -> None:
        super().__init__()
        sigma = check_sigma(sigma)
        num_classes = num_classes if num_classes is not None else getattr(classifier, "num_classes", None)
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive int (or known to the classifier), got {num_classes!r}")
        self.classifier = classifier
        self.denoiser = denoiser
        self.sigma = float(sigma)
        self.num_classes = num_classes
        self.autocast_dtype = autocast_dtype
        self.channels_last = bool(channels_last)
        if self.channels_last:
            for net in (classifier, denoiser):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
        self.passes = self.drawn = 0  # forward passes of `sample_batch` and the noisy samples they held
        prepare = getattr(denoiser, "prepare", None)
        if callable(prepare):  # the denoiser's sigma-dependent constants, chosen once and outside any compiled graph
            prepare(self.sigma)
        self.vote = Vote(denoiser, self.sigma, votes, self.describe())  # the runs of D per sample, their noise
        self.votes = self.vote.votes
        # The networks in one function, compiled once when asked (recompiles only for the last, short batch).
        # torch keeps one cache of compiled graphs, at most 8, per code object: each pipeline compiles its own
        # copy of _f_of_d's code, or a compare run of several compiled pipelines would fall back to eager.
        self._networks = self._f_of_d
        if compile:
            f = type(self)._f_of_d
            own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
            self._networks = torch.compile(types.MethodType(own, self), dynamic=False,
                                           backend=compile if isinstance(compile, str) else "inductor")

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device(getattr(self.classifier, "device", "cpu"))

    def _f_of_d(self, noisy: torch.Tensor, chain_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(D(noisy)), a 0-dim flag: D returned values outside its ``output_range`` (NaN and inf included)).

        A denoiser promises images in [0, 1] (``output_range``); one that passes the noise through (the
        identity) says ``output_range = None``. The flag costs one min/max pass and no host sync.
        ``chain_noise``: one row per noisy image, for a stochastic denoiser (`certify.voting`).
        """
        bad = torch.zeros((), dtype=torch.bool, device=noisy.device)
        if self.denoiser is None:
            return self.classifier(noisy), bad
        images = (self.denoiser(noisy, self.sigma) if chain_noise is None
                  else self.denoiser(noisy, self.sigma, chain_noise))
        if not isinstance(images, torch.Tensor) or images.shape != noisy.shape or not images.is_floating_point():
            got = (f"a {type(images).__name__}" if not isinstance(images, torch.Tensor)
                   else f"{images.dtype} images of shape {tuple(images.shape)}")
            raise PluginOutputError(f"the denoiser of {self.describe()} returned {got} for noisy images of shape "
                                    f"{tuple(noisy.shape)}; a denoiser returns a float tensor of its input's shape")
        bounds = getattr(self.denoiser, "output_range", (0.0, 1.0))
        if bounds is not None:
            lo, hi = torch.aminmax(images.detach())
            bad = ~((lo >= bounds[0]) & (hi <= bounds[1]))  # NaN compares false: flagged too
        return self.classifier(images), bad

    def describe(self) -> str:
        """The pipeline in words, for messages: ``DnCNN -> ImageClassifier(small-cnn)``."""
        names = [type(net).__name__ + (f"({net.name})" if getattr(net, "name", "") else "")
                 for net in (self.denoiser, self.classifier) if net is not None]
        return " -> ".join(names)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator["Smoothed"]:
        """Eval mode for every network inside (BatchNorm statistics, dropout off), as Cohen's code does;
        each module's own train/eval flag is restored on exit."""
        training = [m for m in self.modules() if m.training]  # usually none: then this costs one walk
        if training:
            self.eval()
        try:
            yield self
        finally:
            for m in training:
                m.training = True

    def base_outputs(self, noisy: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """f(D(noisy)) for a batch: logits (B, K), or hard labels (B,) from a classifier that has no logits.

        Differentiable with respect to ``noisy`` when the networks are (the attacks use it); in the
        pipeline's precision and memory format. One run of D per image (a vote has no logits), its chain
        noise, when D draws any, from ``generator``.
        """
        return self._checked_outputs(noisy, chain_noise=self.vote.noise(noisy, [(len(noisy), generator)], 1))[0]

    def _checked_outputs(self, noisy: torch.Tensor, eager: bool = False,
                         chain_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`base_outputs` and the denoiser's flag of `_f_of_d` (``eager``: never through the compiled function)."""
        if self.channels_last and noisy.ndim == 4:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast(noisy.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            return (self._f_of_d if eager else self._networks)(noisy, chain_noise)

    def _classify(self, noisy: torch.Tensor, eager: bool = False,
                  chain_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(class ids of the base classifier on each noisy image, a 0-dim flag on the device: a denoiser's output or
        the classifier's was non-finite or out of range). With ``chain_noise`` (``votes`` rows per image) each
        image is denoised ``votes`` times and the class is their vote (`certify.voting.majority`), every run
        checked. An output of the wrong shape raises `PluginOutputError` at once (no sync)."""
        runs = self.votes if chain_noise is not None else 1
        if runs > 1:
            noisy = noisy.repeat_interleave(runs, dim=0)  # sample-major, as the chain noise
        out, bad = self._checked_outputs(noisy, eager, chain_noise)
        self.check_output_shape(out, len(noisy))
        if out.ndim == 1:  # hard labels
            preds, bad = out, bad | ((out < 0) | (out >= self.num_classes)).any()
        else:
            preds, bad = out.argmax(dim=1), bad | ~torch.isfinite(out).all()
        return (majority(preds, runs, self.num_classes) if runs > 1 else preds), bad

    def vote_generator(self, seed: int, index: int, shape: tuple[int, ...]) -> torch.Generator | None:
        """The image's "vote" stream, the chain noise of D's runs on its noisy samples, when D's runs on images
        of ``shape`` draw any (`certify.voting.Vote.numbers`); None otherwise: nothing is drawn."""
        return self.generator(seed, index, "vote") if self.vote.numbers(shape) else None

    def check_output_shape(self, out: torch.Tensor, batch: int) -> None:
        """Logits must be a (batch, num_classes) tensor and hard labels (batch,) integers (not bool, which would pass
        for classes 0 and 1): a network with more columns than classes would have its extra classes counted as
        others, so a mismatch is refused, never folded."""
        K = self.num_classes  # noqa: N806
        if not isinstance(out, torch.Tensor):
            what = f"a {type(out).__name__}, not a tensor,"
        elif out.dtype == torch.bool or out.is_complex():
            what = f"{out.dtype} outputs of shape {tuple(out.shape)}"
        elif out.ndim == 2 and tuple(out.shape) == (batch, K):
            return
        elif out.ndim == 1 and len(out) == batch and not out.is_floating_point():
            return
        else:
            what = (f"a float vector of shape {tuple(out.shape)} (hard labels must be integer class ids)"
                    if out.ndim == 1 else f"outputs of shape {tuple(out.shape)}")
        raise PluginOutputError(f"the pipeline {self.describe()} returned {what} for a batch of {batch}; expected logits "
                                f"({batch}, {K}) for num_classes={K}, or integer labels ({batch},). Pass the "
                                f"classifier's true num_classes or fix the plugin")

    def refuse(self, where: str) -> NonFiniteOutput:
        return NonFiniteOutput(
            f"the pipeline {self.describe()} returned non-finite outputs (NaN/inf), denoised images outside "
            f"[0, 1] or class ids outside [0, {self.num_classes}) in {where} at sigma={self.sigma:g}; refusing to "
            f"count them. Check the weights (a denoiser trained at an absurd sigma is NaN) and the --autocast precision")

    @torch.inference_mode()
    def base_predict(self, noisy: torch.Tensor, eager: bool = False, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
        """Class ids of the base classifier for a batch of noisy images (the vote, with ``votes`` > 1; chain noise
        from ``generator``), in eval mode (each module's mode restored); non-finite outputs raise
        `NonFiniteOutput`. ``eager``: the networks uncompiled even under ``compile``."""
        chain = self.vote.noise(noisy, [(len(noisy), generator)], self.votes)
        with self.evaluating():
            preds, bad = self._classify(noisy, eager, chain)
        if bool(bad):
            raise self.refuse(f"a batch of {len(noisy)} noisy images")
        return preds

    def find_batch_size(self, shape: tuple[int, ...], limit: int, start: int = 16, cpu_limit: int = 1024) -> int:
        """The largest power-of-two batch (<= ``limit``) whose forward pass fits in memory.

        Probed once per pipeline with doublings from ``start``; a batch that raises out-of-memory ends
        the search. The probe runs the networks eagerly (compiled, each probed size would be one more
        compilation). On the CPU, where a too large batch is swapped or killed rather than refused and
        buys no speed, the search also stops at ``cpu_limit``.

        >>> f = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> Smoothed(f, sigma=0.25, num_classes=2).find_batch_size((1, 2, 2), limit=100)
        64
        """
        self.check_counts(limit=limit, start=start)
        device = self.device
        if device.type == "cpu":
            limit = min(limit, cpu_limit)
        best, batch = 0, min(start, limit)
        while batch <= limit:
            try:
                self.base_predict(torch.rand((batch, *shape), device=device), eager=True,
                                  generator=torch.Generator(device).manual_seed(0))
            except torch.OutOfMemoryError:
                break
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            best, batch = batch, batch * 2
        if best == 0:
            raise RuntimeError(f"not even a batch of {min(start, limit)} images of shape {tuple(shape)} fits "
                               f"in memory on {device}; pass a smaller batch size")
        return best

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """One image (C, H, W), float, in [0, 1], on this pipeline's device as fp32; else a ValueError."""
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected one image of shape (C, H, W), got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"expected a float image in [0, 1], got dtype {x.dtype}")
        lo, hi = float(x.min()), float(x.max())
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(f"image values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
        return x.to(self.device, torch.float32)

    @staticmethod
    def check_counts(**sizes: int) -> None:
        """Each named sample count or batch size must be an int >= 1 (a ValueError names the first that is not)."""
        for name, value in sizes.items():
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")

    def generator(self, seed: int, index: int, stream: str) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(stream_seed(seed, index, stream))

    @torch.inference_mode()
    def sample_batch(self, chunks: Sequence[Chunk | tuple[torch.Tensor, int, torch.Generator]],
                     out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The one sampling step: for each chunk ``(x, size, generator[, vote])`` (`certify.packing.Chunk`), ``size``
        noisy copies ``x + sigma * N(0, I)`` (noise fp32, drawn from that chunk's generator), all in one forward
        pass; a stochastic denoiser's chain noise, ``votes`` runs per copy, from the chunk's ``vote`` stream.

        Returns the class counts per chunk, (len(chunks), K) on the device, and a 0-dim flag that is
        true when any output was non-finite or out of range (no host sync here: the caller decides
        when to look). ``out`` is an optional reusable buffer of at least the total size. Eval mode inside
        (each module's mode restored), without autograd.
        """
        chunks = [Chunk(*chunk) for chunk in chunks]
        sizes = [chunk.size for chunk in chunks]
        x0 = chunks[0].x
        total = sum(sizes)
        self.passes, self.drawn = self.passes + 1, self.drawn + total
        noisy = out[:total] if out is not None else torch.empty((total, *x0.shape), device=x0.device,
                                                                 dtype=torch.float32)
        at = 0
        for x, size, generator, _ in chunks:
            part = torch.randn((size, *x.shape), generator=generator, out=noisy[at:at + size])
            part.mul_(self.sigma).add_(x)  # x + sigma * N(0, I), in place
            at += size
        chain = self.vote.noise(noisy, [(chunk.size, chunk.vote) for chunk in chunks], self.votes)
        with self.evaluating():
            preds, bad = self._classify(noisy, chain_noise=chain)
        K = self.num_classes  # noqa: N806
        slots = torch.where((preds >= 0) & (preds < K), preds, K).long()  # an impossible id: slot K, flagged, dropped
        if len(chunks) > 1:
            owner = torch.repeat_interleave(torch.arange(len(chunks), device=preds.device),
                                            torch.tensor(sizes, device=preds.device))
            slots = slots + owner * (K + 1)
        counts = torch.zeros(len(chunks) * (K + 1), dtype=torch.long, device=preds.device)
        counts.index_add_(0, slots, torch.ones_like(slots))
        return counts.view(len(chunks), K + 1)[:, :K], bad

    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int, generator: torch.Generator,
                      vote: torch.Generator | None = None) -> torch.Tensor:
        """Counts of f(D(x + d)) over ``num`` noise draws, in eval mode, batch by batch (`sample_batch`); ``vote``:
        the image's chain-noise stream when D's runs are stochastic (`vote_generator`).

        The counts stay on the device while sampling (no per-batch sync); the first batch with a
        non-finite output is tracked there too and raises `NonFiniteOutput` before any count is used.
        """
        job = Draws(self.check_input(x), generator, num, batch_size, self.num_classes, vote=vote)
        next(run_packed(self, [job], batch_size))
        return torch.from_numpy(job.finish(self)[0])

    def certify_stream(self, images: Iterable[torch.Tensor], n0: int, n: int, alpha: float, batch_size: int,
                     seed: int = 0, indices: Iterable[int] | None = None, bound: str = "one-class"
                     ) -> Iterator[tuple[int, Certificate, float]]:
        """`certify_full` for a stream of images, several per forward pass where their chunks fit (the tails of
        n0 and n); yields (position in the stream, certificate, seconds spent on it) as each image finishes.
        Each image draws what it would draw alone, so its certificate does not depend on the others.

        >>> g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), sigma=0.25, num_classes=2)
        >>> sorted(k for k, _, _ in g.certify_stream([torch.full((1, 2, 2), 0.5)] * 3, 10, 20, 0.01, 50))
        [0, 1, 2]
        """
        self.check_counts(n0=n0, n=n, batch_size=batch_size)
        check_alpha(alpha)
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {', '.join(BOUNDS)}, got {bound!r}")

        def job(k: int, index: int, x: torch.Tensor) -> Draws:
            vote = self.vote_generator(seed, index, tuple(x.shape))  # both phases' chain noise, in order
            estimation = Draws(x, self.generator(seed, index, "estimation"), n, batch_size, self.num_classes)
            return Draws(x, self.generator(seed, index, "selection"), n0, batch_size, self.num_classes, estimation, k, vote)

        for done in run_packed(self, self._jobs(images, indices, job), batch_size):
            counts0, counts = done.finish(self)
            yield done.tag, certificate(counts.tolist(), int(counts0.argmax()), n0, alpha, self.sigma, bound), done.seconds

    def predict_stream(self, images: Iterable[torch.Tensor], n: int, alpha: float, batch_size: int, seed: int = 0,
                     indices: Iterable[int] | None = None) -> Iterator[tuple[int, Prediction, float]]:
        """`predict_full` for a stream of images, packed as `certify_stream`; yields (position, prediction, seconds)."""
        self.check_counts(n=n, batch_size=batch_size)
        check_alpha(alpha)

        def job(k: int, index: int, x: torch.Tensor) -> Draws:
            return Draws(x, self.generator(seed, index, "prediction"), n, batch_size, self.num_classes, tag=k,
                         vote=self.vote_generator(seed, index, tuple(x.shape)))

        for done in run_packed(self, self._jobs(images, indices, job), batch_size):
            (counts,) = done.finish(self)
            order = np.argsort(-counts, kind="stable")
            nA, cA = int(counts[order[0]]), int(order[0])
            nB = int(counts[order[1]]) if self.num_classes > 1 else 0
            answer = ABSTAIN if two_sided_binomial_pvalue(nA, nA + nB, 0.5) > alpha else cA
            yield done.tag, Prediction(answer, nA, nB, n), done.seconds

    def _jobs(self, images: Iterable[torch.Tensor], indices: Iterable[int] | None, make) -> Iterator[Draws]:
        """One job per image, each checked as it is admitted; ``indices`` name the images' streams (0, 1, ...)."""
        for k, (index, x) in enumerate(zip(indices if indices is not None else itertools.count(), images)):
            yield make(k, index, self.check_input(x))

    def certify_full(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                     seed: int = 0, index: int = 0, bound: str = "one-class") -> Certificate:
        """CERTIFY with its evidence: n0 samples select cA, n fresh samples bound pA from below.

        ``bound="two-class"``: Theorem 1 with the runner-up too, radius sigma/2 (PhiInv(pA_lower) -
        PhiInv(pB_upper)), both bounds together at level 1 - alpha (`certify.stats.two_class_bounds`);
        larger where the votes spread over many classes, it can certify with pA_lower < 1/2.
        """
        return next(self.certify_stream([x], n0, n, alpha, batch_size, seed, [index], bound))[1]

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                seed: int = 0, index: int = 0) -> tuple[int, float]:
        """(class, L2 radius) with probability >= 1 - alpha, or (-1, 0.0) to abstain."""
        c = self.certify_full(x, n0, n, alpha, batch_size, seed, index)
        return c.prediction, c.radius

    def predict_full(self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
                     seed: int = 0, index: int = 0) -> Prediction:
        """PREDICT with its evidence: the class or -1, and the top two counts nA, nB."""
        return next(self.predict_stream([x], n, alpha, batch_size, seed, [index]))[1]

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
                seed: int = 0, index: int = 0) -> int:
        """The smoothed prediction, or -1 when the top two classes are not separated at level alpha."""
        return self.predict_full(x, n, alpha, batch_size, seed, index).prediction
