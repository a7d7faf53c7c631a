"""What a remote run remembers: the answers it bought (``AnswerCache``, SQLite) and the class ids it gave
their labels (``LabelVocabulary``, JSON). Both survive a killed run, so a resumed one re-sends nothing
and keeps the same ids. Neither writes through a symbolic link (the folder, ``answers.sqlite``, its
``-wal``/``-shm``/``-journal`` side files, ``labels.json``): one is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from certify.redact import redact
from certify.results import refuse_links, write_atomic

from .wire import NONE_LABEL, Labels


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
        if self.path is not None:
            refuse_links(self.path, option="--api-cache")
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
    """Every answer ever received, keyed by sha256(api id, PNG bytes); in memory when ``directory`` is None.

    The key hashes the API id as given (a secret in an endpoint changes the key, so answers are never
    shared across endpoints); the ``api`` column stores it redacted.
    """

    FILE = "answers.sqlite"
    SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite writes these beside the database

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self._memory: dict[str, Labels] = {}
        self._db = None
        if directory is not None:
            db = Path(directory) / self.FILE
            refuse_links(directory, db, *(Path(f"{db}{side}") for side in self.SIDE_FILES), option="--api-cache")
            Path(directory).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(db), check_same_thread=False)
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

    def close(self) -> None:
        """Close the database (answers already stored stay); later lookups use the memory copy only."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
