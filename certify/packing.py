"""Packing several images' noise chunks into each batch, for the sequential and anytime modes.

A job (`certify.sequential`) says which generator and how many draws it needs next (``next_chunk``),
takes the class counts of that chunk (``observe``) and says when it is ``done``. Jobs whose next chunks
fit share one forward pass; a finished job's room goes to the next image. The draws a job gets do not
depend on who shared its batch, so neither do its results.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np
import torch

from .smoothing import Smoothed


class Job(Protocol):
    """One image's sampling state, as the packer sees it."""

    x: torch.Tensor
    done: bool

    def next_chunk(self) -> tuple[torch.Generator, int]: ...

    def observe(self, counts: np.ndarray, size: int) -> None: ...


@torch.inference_mode()
def run_packed(smoothed: Smoothed, jobs: Iterable[Job], batch_size: int) -> Iterator[Job]:
    """Pack chunks of several images into each batch; yield finished jobs in input order (eval mode)."""
    with smoothed.evaluating():
        yield from _packed(smoothed, jobs, batch_size)


def _packed(smoothed: Smoothed, jobs: Iterable[Job], batch_size: int) -> Iterator[Job]:
    jobs = iter(jobs)
    active: list[Job] = []
    finished: dict[int, Job] = {}
    order: list[int] = []  # ids in input order, for in-order yielding
    exhausted = False
    shape = None
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
            order.append(id(job))
            finished[id(job)] = None
            generator, size = job.next_chunk()
            if used + size > batch_size:
                break  # it starts in the next batch
            batch.append((job, generator, size))
            used += size
        if not batch:
            break
        counts, bad = smoothed.sample_batch([(job.x, size, generator) for job, generator, size in batch])
        smoothed.refuse_if(bad, f"a batch of {used} noisy images")
        counts = counts.cpu().numpy()  # the one host read per batch: stopping needs it
        for (job, _, size), row in zip(batch, counts):
            job.observe(row, size)
            if job.done:
                active.remove(job)
                finished[id(job)] = job
        while order and finished[order[0]] is not None:
            yield finished.pop(order.pop(0))


__all__ = ["Job", "run_packed"]
