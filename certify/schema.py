"""One entry of the run schema: a setting's name, its help, how the CLI reads it, its default and its rule.

Every run setting is an `Option`, declared once where it belongs (the core fields in `certify.settings`,
a mode's own options in its module under `certify.modes`). The CLI's flags and help, the compare-config
keys and the manifest's fields are all derived from these entries: the name is the manifest field and
the config key, the flag defaults to ``--name-with-dashes``.

>>> o = Option("step", "samples before the first check", kind=int, check=lambda v: v)
>>> o.flag, o.key
('--step', 'step')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

#: how the CLI reads an option: a converter (int, float, str, a function), or one of these shapes
FLAG, NUMBERS, KEYWORDS = "flag", "numbers", "keywords"


@dataclass(frozen=True)
class Option:
    """A run setting. ``kind``: a converter from the CLI's text, or FLAG (a switch), NUMBERS (comma-separated
    numbers), KEYWORDS (repeated KEY=VALUE into a mapping). ``default``: what the run records when the option
    is unset (None: it stays unset), a function of the settings when it depends on them. ``check`` states the
    rule once: it returns the value (normalized) or raises a ValueError naming it."""

    name: str
    help: str
    kind: Any = str
    default: Any = None
    check: Callable[[Any], Any] | None = None
    choices: tuple[str, ...] | None = None
    flag_name: str | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        """The compare-config key (and manifest field): the name."""
        return self.name

    @property
    def unset(self) -> Any:
        """The value of an option nobody set: off for a switch, empty for keywords, else None."""
        return False if self.kind == FLAG else {} if self.kind == KEYWORDS else None

    def validate(self, value: Any) -> Any:
        """The value, checked against ``choices`` and ``check`` (unset values pass as they are)."""
        if value is None or value is self.unset or (self.kind == KEYWORDS and value == {}):
            return value
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if self.kind == FLAG and not isinstance(value, bool):
            raise ValueError(f"{self.name} must be true or false, got {value!r}")
        if self.kind == KEYWORDS and not isinstance(value, dict):
            raise ValueError(f"{self.name} must be a mapping of keyword arguments, got {value!r}")
        return self.check(value) if self.check is not None else value


def number(value: Any) -> bool:
    """A real, finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole(name: str, least: int = 1) -> Callable[[Any], int]:
    """The rule "an int >= least" for the option ``name`` (a float such as 20.0 from YAML is taken as 20)."""

    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        return value

    return check


def positive(name: str, upper: float | None = None, what: str = "a positive number") -> Callable[[Any], float]:
    """The rule "a finite number > 0 (and < upper)" for the option ``name``."""

    def check(value: Any) -> float:
        if not (number(value) and value > 0 and (upper is None or value < upper)):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        return value

    return check


__all__ = ["FLAG", "KEYWORDS", "NUMBERS", "Option", "number", "positive", "whole"]
