"""One reader for every YAML config (compare configs, trainer configs): the file, YAML, a mapping, known keys.

>>> import tempfile
>>> path = tempfile.mktemp(suffix=".yaml")
>>> _ = open(path, "w").write("n: 10\\n")
>>> read_config(path, known=["n", "alpha"])
{'n': 10}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import yaml


def read_config(path: str | os.PathLike, known: Iterable[str] | None = None, what: str = "config") -> dict[str, Any]:
    """The mapping in a YAML file; a missing file, bad YAML, a non-mapping or an unknown key is one line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of keys to values, got {type(raw).__name__}")
    if known is not None:
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    return raw


__all__ = ["read_config"]
