"""The one layer around every remote vision API: a hard-label classifier with retries, a rate limit,
a query budget, an on-disk answer cache and a label vocabulary.

What goes over the wire: each noisy image is **clipped to [0,1]**, quantized to 8 bits
(``round(255 x)``) and encoded as a PNG (lossless, deterministic bytes). Smoothing noise is unbounded,
so clipping is what any image format forces; it is part of the base classifier f, applied after the
noise like any other preprocessing, so the certificate stays valid.

Why each piece:

- **Cache** (SQLite, ``cache_dir/answers.sqlite``): every answer is stored the moment it arrives,
  keyed by ``sha256(api id, PNG bytes)``. The engine draws noise deterministically per (seed, image
  index), so a resumed or repeated run produces the same PNG bytes and re-sends nothing; a finished run
  can be re-certified offline. Stored: the API id (vendor, endpoint, model options; never a credential),
  the image digest, the ranked labels and scores.
- **Budget**: queries actually sent (cache hits are free). A batch whose new queries would exceed it is
  refused *before anything is sent*, with the number of queries that remain; answers bought so far stay
  in the cache, so a later run with a larger budget picks up where this one stopped.
- **Retries**: 429, 5xx, timeouts, connection errors and unparsable answers are retried with
  exponential backoff and full jitter, waiting at least the server's ``Retry-After``.
- **Vocabulary**: label strings become stable class ids in order of first appearance ("none", the class
  of an empty answer, is always 0); saved as JSON so a resumed run keeps the same ids.
- **Credentials** stay inside the adapters (read from the vendor's usual environment variables); they
  are never part of the API id, the cache, the vocabulary, ``describe()`` or log messages.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import email.utils
import hashlib
import io
import json
import logging
import os
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from certify.errors import ResumableStop
from certify.redact import redact
from certify.results import write_atomic

log = logging.getLogger(__name__)

NONE_LABEL = "none"
Labels = list  # ranked [(name, score), ...], best first


class RemoteError(ResumableStop):
    """The API refused a query for good (bad credentials, bad request) or retries ran out."""


class BudgetExceeded(ResumableStop):
    """Sending the next queries would exceed the run's query budget; nothing was sent."""


class Retryable(Exception):
    """A transient failure (429, 5xx, timeout, connection error, malformed answer)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    >>> parse_retry_after("3"), parse_retry_after(None), parse_retry_after("soon")
    (3.0, None, None)
    """
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if seconds == seconds else None  # inf stays inf: "not soon"
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


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


class Adapter:
    """One vendor's request and response format. Subclasses set ``vendor`` and implement ``query``.

    ``query(png, timeout)`` returns the ranked labels ``[(name, score), ...]`` (empty: no label), raises
    ``Retryable`` for transient failures and ``RemoteError`` for permanent ones. It must never put a
    credential into an exception message.
    """

    vendor = "base"

    def api_id(self) -> str:
        """What identifies the answers (vendor, endpoint, model options); part of the cache key."""
        raise NotImplementedError

    def query(self, png: bytes, timeout: float) -> Labels:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"vendor": self.vendor, "api": self.api_id()}


class RestAdapter(Adapter):
    """Shared plumbing for vendors called with plain HTTPS + JSON (one ``requests`` session per thread)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _session(self):
        import requests

        if getattr(self._local, "session", None) is None:
            self._local.session = requests.Session()
        return self._local.session

    def post(self, url: str, timeout: float, headers: dict[str, str], **body: Any) -> Any:
        """POST and return the decoded JSON; transient failures become ``Retryable``."""
        import requests

        try:
            resp = self._session().post(url, headers=headers, timeout=timeout, **body)
        except requests.Timeout as exc:
            raise Retryable(f"{self.vendor}: timed out after {timeout:g} s") from exc
        except requests.ConnectionError as exc:
            raise Retryable(f"{self.vendor}: connection error ({type(exc).__name__})") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise Retryable(f"{self.vendor}: HTTP {resp.status_code}", parse_retry_after(resp.headers.get("Retry-After")))
        if resp.status_code in (401, 403):
            raise RemoteError(f"{self.vendor} refused the query: HTTP {resp.status_code} (not authorized): check the "
                              f"API credentials in the environment")
        if resp.status_code >= 400:
            raise RemoteError(f"{self.vendor} refused the query: HTTP {resp.status_code} {resp.text[:200]!r}")
        try:
            return resp.json()
        except ValueError as exc:
            raise Retryable(f"{self.vendor}: malformed JSON answer ({len(resp.content)} bytes)") from exc


def credential(*names: str, required: bool = True, vendor: str = "") -> str | None:
    """The first set environment variable among ``names`` (its value is never logged)."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    if required:
        raise ValueError(f"{vendor} needs a credential in the environment variable {' or '.join(names)}")
    return None


class LabelVocabulary:
    """Label strings -> stable class ids (first appearance order, "none" = 0), saved as JSON.

    >>> v = LabelVocabulary(capacity=4)
    >>> v.id("cat"), v.id("dog"), v.id("cat"), v.id("none"), v.labels
    (1, 2, 1, 0, ['none', 'cat', 'dog'])
    """

    def __init__(self, capacity: int = 1024, path: str | os.PathLike | None = None) -> None:
        if not (isinstance(capacity, int) and capacity >= 2):
            raise ValueError(f"vocabulary capacity must be an int >= 2, got {capacity!r}")
        self.capacity = capacity
        self.path = Path(path) if path is not None else None
        self._ids: dict[str, int] = {NONE_LABEL: 0}
        self._lock = threading.Lock()
        if self.path is not None and self.path.is_file():
            saved = json.loads(self.path.read_text())
            labels = saved["labels"] if isinstance(saved, dict) else saved
            if not labels or labels[0] != NONE_LABEL or len(labels) > capacity:
                raise ValueError(f"{self.path} is not a label vocabulary for capacity {capacity}")
            self._ids = {name: i for i, name in enumerate(labels)}

    @property
    def labels(self) -> list[str]:
        return list(self._ids)

    def id(self, label: str) -> int:
        with self._lock:
            if label not in self._ids:
                if len(self._ids) >= self.capacity:
                    raise ValueError(f"label vocabulary is full ({self.capacity} labels); cannot add {label!r}: "
                                     "raise num_classes")
                self._ids[label] = len(self._ids)
                self.save()
            return self._ids[label]

    def save(self, path: str | os.PathLike | None = None) -> None:
        target = Path(path) if path is not None else self.path
        if target is None:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, json.dumps({"capacity": self.capacity, "labels": self.labels}, indent=1) + "\n")


class AnswerCache:
    """Every answer ever received, keyed by sha256(api id, PNG bytes); in memory when ``directory`` is None."""

    FILE = "answers.sqlite"

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self._memory: dict[str, Labels] = {}
        self._db = None
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(Path(directory) / self.FILE), check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, api TEXT, "
                             "image_sha256 TEXT, labels TEXT, time REAL)")
            self._db.commit()
        self._lock = threading.Lock()

    @staticmethod
    def key(api: str, png: bytes) -> str:
        return hashlib.sha256(api.encode() + b"\0" + png).hexdigest()

    def get(self, key: str) -> Labels | None:
        if key in self._memory:
            return self._memory[key]
        if self._db is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT labels FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        labels = [tuple(item) for item in json.loads(row[0])]
        self._memory[key] = labels
        return labels

    def put(self, key: str, api: str, png: bytes, labels: Labels) -> None:
        self._memory[key] = labels
        if self._db is not None:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                                 (key, redact(api), hashlib.sha256(png).hexdigest(), json.dumps(labels), time.time()))
                self._db.commit()

    def __len__(self) -> int:
        if self._db is None:
            return len(self._memory)
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])


class _RateLimiter:
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
        self.cache = AnswerCache(cache_dir)
        if isinstance(vocabulary, LabelVocabulary):
            self.vocabulary = vocabulary
        else:
            if vocabulary is None and cache_dir is not None:
                vocabulary = Path(cache_dir) / "labels.json"
            self.vocabulary = LabelVocabulary(num_classes, vocabulary)
        self.num_classes = self.vocabulary.capacity
        self.budget = budget
        self.queries_sent = 0  # answered queries this run (what the budget counts)
        self._reserved = 0
        self.concurrency, self.max_retries, self.backoff, self.max_backoff = concurrency, max_retries, backoff, max_backoff
        self.timeout = float(timeout)
        self._rate = _RateLimiter(rate_limit)
        self._pool: cf.ThreadPoolExecutor | None = None
        self._rng = random.Random()
        self.name = f"remote:{adapter.vendor}"

    # --- what the run records -------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return self.vocabulary.labels

    @property
    def remaining(self) -> int | None:
        """Queries left in the budget (None: unlimited)."""
        return None if self.budget is None else self.budget - self.queries_sent - self._reserved

    def describe(self) -> dict[str, Any]:
        """Settings for a run manifest (no credentials)."""
        return dict(redact(self.adapter.describe()), num_classes=self.num_classes, budget=self.budget,
                    concurrency=self.concurrency, max_retries=self.max_retries, timeout=self.timeout,
                    encoding="clip to [0,1], round(255 x), PNG")

    def require(self, queries: int) -> None:
        """Refuse now (``BudgetExceeded``) if ``queries`` more would exceed the budget."""
        remaining = self.remaining
        if remaining is not None and queries > remaining:
            raise BudgetExceeded(f"query budget of {self.budget} would be exceeded: {queries} new queries needed, "
                                 f"only {remaining} remain ({self.queries_sent} sent this run). Nothing was sent; "
                                 "answers so far are cached, so a run with a larger budget resumes from here.")

    # --- querying ---------------------------------------------------------------------------------
    def _query_with_retries(self, png: bytes) -> Labels:
        for attempt in range(self.max_retries + 1):
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
            self.require(len(todo))
            self._reserved += len(todo)
            try:
                self._fetch(todo, found)
            finally:
                self._reserved = 0
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
                self.queries_sent += 1
                self._reserved -= 1
        except BaseException:
            for f in futures:
                f.cancel()
            cf.wait(futures)  # queries already in flight still land in the cache
            self.queries_sent += sum(1 for f in futures if f.done() and not f.cancelled()
                                     and f.exception() is None and futures[f] not in found)
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
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
