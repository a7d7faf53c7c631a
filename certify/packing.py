"""Packing several images' noise chunks into each forward pass: the one sampling loop of every mode.

A job (one image's sampling state) says which generator and how many draws it needs next
(``next_chunk``), takes the class counts of that chunk (``observe``) and says when it is ``done``. Jobs
whose next chunks fit share one forward pass; a finished job's room goes to the next image. A job draws
exactly the chunks it would draw alone, from its own generators (its smoothing noise, and its chain noise
when the denoiser's runs are stochastic: `Chunk`), so its results do not depend on who shared its
batches, on the batch order, or on the process that ran it.

The host is read only when it must be: a job that decides as it goes (``wants_counts``: the sequential
tests) gets its counts as a NumPy row, read once per batch for all such jobs; a job of fixed size
(`Draws`: Cohen's CERTIFY and PREDICT) keeps its counts on the device and is read once, when it is done.
Wall time is shared out at each host read among the jobs that drew since the last one, by their samples,
so the per-image times add up to the run's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch


class Chunk(NamedTuple):
    """``size`` noisy copies of image ``x``, their smoothing noise from ``generator``; ``vote``: the image's stream
    of chain noise when its denoiser's runs are stochastic (`certify.voting`), else None."""

    x: torch.Tensor
    size: int
    generator: torch.Generator
    vote: torch.Generator | None = None


class Sampler(Protocol):
    """What the packer needs of `certify.smoothing.Smoothed`."""

    def sample_batch(self, chunks: list[Chunk], out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def refuse(self, where: str) -> Exception: ...


class Job(Protocol):
    """One image's sampling state, as the packer sees it (``vote``, optional: its chain-noise stream, `Chunk`)."""

    x: torch.Tensor
    done: bool
    wants_counts: bool
    seconds: float

    def next_chunk(self) -> tuple[torch.Generator, int]: ...

    def observe(self, counts, size: int, bad: torch.Tensor) -> None: ...


class Draws:
    """``total`` draws of ``x`` from one generator, in chunks of at most ``batch_size`` (as one image alone would
    draw them); the counts and the first batch whose outputs were bad stay on the device until `finish`.

    ``then``: a further `Draws` of the same image that starts when this one is done (CERTIFY's estimation
    after its selection); `phases` lists them all. ``tag``: the caller's, e.g. the image's place in its stream.
    ``vote``: the image's chain-noise stream (`Chunk`), shared by its phases, which draw from it in order.
    """

    wants_counts = False

    def __init__(self, x: torch.Tensor, generator: torch.Generator, total: int, batch_size: int, num_classes: int,
                 then: "Draws | None" = None, tag: Any = None, vote: torch.Generator | None = None) -> None:
        self.x, self.generator, self.total, self.batch_size, self.then = x, generator, total, batch_size, then
        self.tag, self.vote = tag, vote
        self.counts = torch.zeros(num_classes, dtype=torch.long, device=x.device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=x.device)
        self.drawn = self.batches = 0
        self.seconds = 0.0

    @property
    def current(self) -> "Draws":
        return self.then.current if self.drawn == self.total and self.then is not None else self

    @property
    def done(self) -> bool:
        return self.drawn == self.total and (self.then is None or self.then.done)

    @property
    def phases(self) -> list["Draws"]:
        return [self] + (self.then.phases if self.then is not None else [])

    def next_chunk(self) -> tuple[torch.Generator, int]:
        phase = self.current
        return phase.generator, min(phase.batch_size, phase.total - phase.drawn)

    def observe(self, counts: torch.Tensor, size: int, bad: torch.Tensor) -> None:
        phase = self.current
        phase.counts += counts
        phase.first_bad = torch.where(bad & (phase.first_bad < 0), phase.batches, phase.first_bad)
        phase.drawn, phase.batches = phase.drawn + size, phase.batches + 1

    def finish(self, sampler: Sampler) -> list[np.ndarray]:
        """Each phase's counts on the host (one read), after refusing bad outputs, naming the first bad batch."""
        for phase in self.phases:
            k = int(phase.first_bad)
            if k >= 0:
                last = min(phase.total, (k + 1) * phase.batch_size) - 1
                raise sampler.refuse(f"batch {k} (noise samples {k * phase.batch_size}..{last})")
        return [phase.counts.cpu().numpy() for phase in self.phases]


@torch.inference_mode()
def run_packed(sampler: Sampler, jobs: Iterable[Job], batch_size: int, look_ahead: bool = True) -> Iterator[Job]:
    """Pack chunks of several images into each batch; yield jobs as they finish (eval mode inside).

    New images are admitted in input order while the batch has room and no admitted image waits for it.
    ``look_ahead``: the room left in a batch goes, in equal shares, to the jobs that decide at checks
    (``look_ahead(room)``): each draws the chunks of its next few checks at once, each chunk its own draw from
    its own generator as it would be alone, and reads them in order, so its result is the same; what it
    drew past the check where it stopped is wasted. On a device where a full batch costs little more than a
    small one, that trades a few samples for far fewer forward passes (and host reads); with many images in
    flight the shares are small and nothing changes. A classifier that is paid by the query (``pays_per_query``,
    a remote API) never looks ahead: a sample drawn past a stop would be a request sent for nothing.
    """
    look_ahead = look_ahead and not getattr(getattr(sampler, "classifier", None), "pays_per_query", False)
    jobs = iter(jobs)
    active: list[Job] = []
    shape = buffer = None  # the noisy batch is drawn into one buffer, reused
    exhausted = False
    drew: dict[int, tuple[Job, int]] = {}  # samples per job since the last host read
    last_read = time.perf_counter()
    while True:
        batch: list[tuple[Job, torch.Generator, int]] = []  # each job's next chunk, asked for once
        used, blocked = 0, False
        for job in active:
            generator, size = job.next_chunk()
            if used + size <= batch_size:
                batch.append((job, generator, size))
                used += size
            else:
                blocked = True  # someone already waits: start no new image this batch
        while used < batch_size and not exhausted and not blocked:
            job = next(jobs, None)
            if job is None:
                exhausted = True
                break
            if shape is None:
                shape = job.x.shape
            elif job.x.shape != shape:
                raise ValueError(f"images packed together must share one shape, got {tuple(job.x.shape)} "
                                 f"after {tuple(shape)}")
            active.append(job)
            generator, size = job.next_chunk()
            if used + size > batch_size:
                break  # it starts in the next batch
            batch.append((job, generator, size))
            used += size
        if not batch:
            return
        ahead = [job for job, _, _ in batch if look_ahead and hasattr(job, "look_ahead")]
        if ahead and used < batch_size:  # the room left, in equal shares, for the checks after the next one
            share = (batch_size - used) // len(ahead)
            for job in ahead:
                extra = job.look_ahead(share)
                batch += [(job, generator, size) for generator, size in extra]
                used += sum(size for _, size in extra)
        if buffer is None:
            buffer = torch.empty((batch_size, *shape), dtype=torch.float32, device=batch[0][0].x.device)
        counts, bad = sampler.sample_batch([Chunk(job.x, size, generator, getattr(job, "vote", None))
                                            for job, generator, size in batch], out=buffer)
        host = None
        if any(job.wants_counts for job, _, _ in batch):  # one read for every job that decides now
            host = torch.cat([counts.flatten(), bad.view(1).long()]).cpu().numpy()
            if host[-1]:
                raise sampler.refuse(f"a batch of {used} noisy images")
            host = host[:-1].reshape(counts.shape)
        for k, (job, _, size) in enumerate(batch):
            job.observe(host[k] if job.wants_counts else counts[k], size, bad)
            drew[id(job)] = (job, drew.get(id(job), (job, 0))[1] + size)
        finished = [job for job in active if job.done]
        if finished and host is None:
            int(counts[0, 0])  # wait for the device, so that the time below is the batch's
        if host is not None or finished:  # the host has waited for this batch: share the time out
            now = time.perf_counter()
            total = sum(n for _, n in drew.values())
            for job, n in drew.values():
                job.seconds += (now - last_read) * n / total
            drew, last_read = {}, now
        for job in finished:
            active.remove(job)
            yield job


def in_order(finished: Iterable[tuple[int, Any, float]]) -> Iterator[Any]:
    """The results of (position, result, seconds) that arrive as images finish, in input order (0, 1, 2, ...)."""
    waiting: dict[int, Any] = {}
    next_up = 0
    for position, result, _ in finished:
        waiting[position] = result
        while next_up in waiting:
            yield waiting.pop(next_up)
            next_up += 1


__all__ = ["Chunk", "Draws", "Job", "Sampler", "in_order", "run_packed"]
