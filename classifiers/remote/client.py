"""The one layer around every remote vision API: a hard-label classifier with retries, a rate limit,
a query budget, an on-disk answer cache and a label vocabulary. Its parts: the PNG wire format
(``wire.py``), the vendor adapters and their errors (``adapters.py``), the cache and the vocabulary
(``cache.py``); the client here ties them together. ``close()`` (or ``with``) releases the threads and
the cache; the run loop calls it when a run ends.

Why each piece:

- **Cache** (SQLite, ``cache_dir/answers.sqlite``): every answer is stored the moment it arrives,
  keyed by ``sha256(api id, PNG bytes)``. The engine draws noise deterministically per (seed, image
  index), so a resumed or repeated run produces the same PNG bytes and re-sends nothing; a finished run
  can be re-certified offline. Stored: the API id (vendor, endpoint, model options; redacted), the
  image digest, the ranked labels and scores.
- **Budget**: a hard cap on the HTTP requests sent, retries included (each attempt is one request; cache
  hits are free). A batch with more new images than requests remain is refused *before anything is
  sent*; every attempt, first or retry, takes one request under a lock before it is sent, so several
  threads retrying never pass the cap. Either way the run stops with ``BudgetExceeded``; answers
  bought so far stay in the cache, so a later run with a larger budget picks up where this one stopped.
- **Retries**: 429, 5xx, timeouts, connection errors and unparsable answers are retried with
  exponential backoff and full jitter, waiting at least the server's ``Retry-After``.
- **Vocabulary**: label strings become stable class ids in order of first appearance ("none", the class
  of an empty answer, is always 0); saved as JSON so a resumed run keeps the same ids.
- **Credentials** stay inside the adapters (read from the vendor's usual environment variables). A secret
  in the endpoint itself (a signed URL, ``?key=``, user info) is part of the API id, so part of the cache
  key's hash, but is redacted (``certify.redact``) wherever the id is written: the cache's ``api``
  column, ``describe()``, messages and logs.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from certify.errors import ResumableStop
from certify.redact import redact

from .adapters import Adapter, RemoteError, Retryable
from .cache import AnswerCache, LabelVocabulary
from .wire import NONE_LABEL, Labels, encode_png

log = logging.getLogger(__name__)


class BudgetExceeded(ResumableStop):
    """Sending the next queries would exceed the run's query budget; nothing was sent."""


class RateLimiter:
    """At most ``rate`` request starts per second across all threads (None: unlimited)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate_limit must be a positive number of queries per second, got {rate!r}")
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class RemoteClassifier(nn.Module):
    """A remote vision API as a hard-label classifier: [0,1] images (B, C, H, W) -> class ids (B,).

    ``num_classes`` is the vocabulary's capacity; ``labels`` the label strings seen so far (id order).
    Not differentiable: train denoisers for it through surrogates.
    """

    differentiable = False
    pays_per_query = True  # every sample is a request: the sampling loop draws none past a test's stop

    def __init__(self, adapter: Adapter, num_classes: int = 1024, cache_dir: str | os.PathLike | None = None,
                 vocabulary: str | os.PathLike | LabelVocabulary | None = None, budget: int | None = None,
                 concurrency: int = 4, max_retries: int = 6, backoff: float = 0.5, max_backoff: float = 60.0,
                 rate_limit: float | None = None, timeout: float = 30.0, max_retry_wait: float = 120.0) -> None:
        super().__init__()
        if budget is not None and not (isinstance(budget, int) and budget >= 0):
            raise ValueError(f"budget must be a non-negative int (queries), got {budget!r}")
        if not (isinstance(concurrency, int) and concurrency >= 1):
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not (timeout > 0 and backoff >= 0 and max_backoff >= 0 and max_retry_wait >= 0):
            raise ValueError(f"timeout must be > 0 and backoff, max_backoff, max_retry_wait >= 0; got {timeout}, "
                             f"{backoff}, {max_backoff}, {max_retry_wait}")
        self.max_retry_wait = float(max_retry_wait)
        self.adapter = adapter
        self.api = adapter.api_id()
        if isinstance(vocabulary, LabelVocabulary):
            self.vocabulary = vocabulary
        else:
            if vocabulary is None and cache_dir is not None:
                vocabulary = Path(cache_dir) / "labels.json"
            self.vocabulary = LabelVocabulary(num_classes, vocabulary)  # reads only: a link is refused first
        self.cache = AnswerCache(cache_dir)
        self.num_classes = self.vocabulary.capacity
        self.budget = budget
        self.queries_sent = 0  # HTTP requests sent this run, retries included (what the budget counts)
        self._budget_lock = threading.Lock()
        self.concurrency, self.max_retries, self.backoff, self.max_backoff = concurrency, max_retries, backoff, max_backoff
        self.timeout = float(timeout)
        self._rate = RateLimiter(rate_limit)
        self._pool: cf.ThreadPoolExecutor | None = None
        self._rng = random.Random()
        self.name = f"remote:{adapter.vendor}"

    # --- what the run records -------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return self.vocabulary.labels

    @property
    def remaining(self) -> int | None:
        """Requests left in the budget (None: unlimited)."""
        return None if self.budget is None else self.budget - self.queries_sent

    def describe(self) -> dict[str, Any]:
        """Settings for a run manifest (no credentials)."""
        return dict(redact(self.adapter.describe()), num_classes=self.num_classes, budget=self.budget,
                    budget_counts="HTTP requests sent, retries included (cache hits are free)",
                    concurrency=self.concurrency, max_retries=self.max_retries, timeout=self.timeout,
                    encoding="clip to [0,1], round(255 x), PNG")

    def require(self, queries: int) -> None:
        """Refuse now (``BudgetExceeded``) if ``queries`` more requests would exceed the budget."""
        remaining = self.remaining
        if remaining is not None and queries > remaining:
            raise BudgetExceeded(f"query budget of {self.budget} would be exceeded: {queries} new queries needed, "
                                 f"only {remaining} remain ({self.queries_sent} requests sent this run, retries "
                                 "included). Nothing was sent; answers so far are cached, so a run with a larger "
                                 "budget resumes from here.")

    def _spend_one(self) -> None:
        """Take one request from the budget before it is sent (first attempt or retry), or refuse.

        Under a lock: threads retrying at once never send more than the budget.
        """
        with self._budget_lock:
            if self.budget is not None and self.queries_sent >= self.budget:
                raise BudgetExceeded(f"query budget of {self.budget} would be exceeded: all {self.budget} requests "
                                     "were sent (retries included) and an image still needs one. Answers so far "
                                     "are cached, so a run with a larger budget resumes from here.")
            self.queries_sent += 1

    # --- querying ---------------------------------------------------------------------------------
    def _query_with_retries(self, png: bytes) -> Labels:
        for attempt in range(self.max_retries + 1):
            self._spend_one()  # every request counts, a retry too
            self._rate.wait()
            try:
                try:
                    return [(str(name), float(score)) for name, score in self.adapter.query(png, self.timeout)]
                except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:  # an answer of the wrong shape
                    raise Retryable(f"{self.adapter.vendor}: malformed answer ({type(exc).__name__}: {exc})") from exc
            except Retryable as exc:
                if attempt == self.max_retries:
                    raise RemoteError(f"{self.name}: gave up after {attempt + 1} attempts ({exc}); the answers so far "
                                      f"are cached: run the same command again later to resume") from exc
                delay = self._rng.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))
                if exc.retry_after is not None:
                    if exc.retry_after > self.max_retry_wait:
                        raise RemoteError(f"{self.name}: the server asks to wait {exc.retry_after:g} s (Retry-After), "
                                          f"more than max_retry_wait={self.max_retry_wait:g} s; stopped, and the run "
                                          f"can be resumed later (answers so far are cached)") from exc
                    delay = max(delay, exc.retry_after)
                log.warning("%s: %s; retry %d/%d in %.2f s", self.name, exc, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def answers(self, pngs: Sequence[bytes]) -> list[Labels]:
        """Ranked labels for each PNG: from the cache, else from the API (concurrently, within budget)."""
        keys = [AnswerCache.key(self.api, p) for p in pngs]
        found: dict[str, Labels] = {}
        todo: dict[str, bytes] = {}
        for k, p in zip(keys, pngs):
            if k in found or k in todo:
                continue
            hit = self.cache.get(k)
            if hit is not None:
                found[k] = hit
            else:
                todo[k] = p
        if todo:
            self.require(len(todo))  # each new image needs at least one request
            self._fetch(todo, found)
        return [found[k] for k in keys]

    def _fetch_one(self, key: str, png: bytes) -> Labels:
        labels = self._query_with_retries(png)
        self.cache.put(key, self.api, png, labels)  # stored by the worker at once: a kill loses only in-flight queries
        return labels

    def _fetch(self, todo: dict[str, bytes], found: dict[str, Labels]) -> None:
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix=self.name)
        futures = {self._pool.submit(self._fetch_one, k, p): k for k, p in todo.items()}
        try:
            for fut in cf.as_completed(futures):
                found[futures[fut]] = fut.result()
        except BaseException:
            for f in futures:
                f.cancel()
            cf.wait(futures)  # queries already in flight still land in the cache
            raise

    @staticmethod
    def top_label(labels: Labels) -> str:
        """The class of an answer: its first (top) label, or "none" for an empty answer."""
        return labels[0][0] if labels else NONE_LABEL

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(images.shape)}")
        answers = self.answers([encode_png(img) for img in images])
        ids = [self.vocabulary.id(self.top_label(a)) for a in answers]
        return torch.tensor(ids, dtype=torch.long, device=images.device)

    def clean_label(self, image: torch.Tensor) -> int:
        """The API's top label on the clean image as a class id: the ground truth of ``--label-from-api``.

        One (cached) query; the image should be in [0,1] (it is clipped and PNG-encoded like any other).
        """
        return int(self(image[None])[0])

    def close(self) -> None:
        """Wait for queries in flight, stop the threads and close the cache (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.cache.close()

    def __enter__(self) -> "RemoteClassifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
