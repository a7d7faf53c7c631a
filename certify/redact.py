"""Credentials never reach a file we write or a message we print: one rule, used for every record.

The rule: a value is a credential when its *name* looks like one. A name is split into words at '-',
'_', '.', case changes and digits (``X-Goog-Signature`` -> x goog signature, ``accessToken`` -> access
token); it is a credential's name when a word ends with ``key``, ``token``, ``secret``, ``signature``,
``password``, ``passwd``, ``pwd``, ``passphrase``, ``credential`` or ``auth``/``authorization`` (plural too:
``apikey``, ``oauth``, ``credentials``), or is ``pass`` or ``sig``, or the whole name is ``code`` (an
Azure Functions key). Where a name meets a value:

- ``name=value`` anywhere in a text (URL queries, ``--classifier-arg pwd=P``, ``--api-key=K``),
- ``'name': 'value'`` / ``"name": "value"`` (a dict's repr, JSON), ``--name value`` (a command line),
- a dict's key (recorded settings such as ``classifier_kwargs: {api_key: ...}``): the whole value,
- and always a URL's user info (``https://user:pw@host``).

A false positive (``monkey=``) only hides a value from the record (and a change of it from the resume
check, which compares redacted settings); the answer cache keys on the unredacted API id.

>>> redact("https://user:pw@api.example.com/v1?X-Goog-Signature=S1&model=x&pwd=P")
'https://REDACTED@api.example.com/v1?X-Goog-Signature=REDACTED&model=x&pwd=REDACTED'
>>> redact({"endpoint": "http://h/p?accessToken=abc", "classifier_kwargs": {"apiKey": 123}, "n": 3})
{'endpoint': 'http://h/p?accessToken=REDACTED', 'classifier_kwargs': {'apiKey': 'REDACTED'}, 'n': 3}
>>> [is_secret_name(n) for n in ("X-Amz-Security-Token", "client_secret", "PASSWD", "max_results", "keyframes")]
[True, True, True, False, False]
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote

MASK = "REDACTED"
#: A word of a name that ends with one of these marks a credential (``apikey``, ``oauth``, ``x_amz_signature``).
SECRET_ENDINGS = ("key", "token", "secret", "signature", "password", "passwd", "pwd", "passphrase", "credential",
                  "auth", "authorization")
#: Words that mark a credential only on their own (``lowpass`` and ``bypass`` do not).
SECRET_WORDS = ("pass", "sig")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")
_VALUE = r"[^\s&#'\"|\\<>]*"  # ends at a space, a quote, the next query pair, a fragment, an API id's '|'
_PAIRS = (  # where a name meets its value (the value is only looked at, so pairs inside it are found too)
    re.compile(rf"(?<![\w.%])(?P<name>[A-Za-z][\w.%-]*)=(?=[\"']?(?P<value>{_VALUE}))"),
    re.compile(r"(?P<q>[\"'])(?P<name>[A-Za-z][\w.-]*)(?P=q)\s*:\s*b?[\"'](?P<value>[^\"'\\]*)[\"']"),
    re.compile(r"(?<!\S)--(?P<name>[A-Za-z][\w-]*)\s+(?P<value>[^\s-]\S*)"),
    re.compile(r"[A-Za-z][\w+.-]*://(?P<value>[^/?#@\s'\"]+)@"),  # user info: masked whatever its name
)


def is_secret_name(name: str) -> bool:
    """Whether a query parameter, option or dict key named ``name`` holds a credential (the rule above).

    >>> is_secret_name("X-Goog-Signature"), is_secret_name("accessToken"), is_secret_name("lowpass")
    (True, True, False)
    """
    words = [w.lower() for w in _WORD.findall(unquote(name))]
    if name.lower() == "code":
        return True
    return any(w.rstrip("s").endswith(SECRET_ENDINGS) or w.endswith(SECRET_ENDINGS) or w in SECRET_WORDS
               for w in words)


def redact_text(text: str) -> str:
    """``text`` with every credential value in it (by the rule above) replaced by ``REDACTED``.

    >>> redact_text("--classifier-arg pwd=P --api-key K url: /x?sig=S&sv=1")
    '--classifier-arg pwd=REDACTED --api-key REDACTED url: /x?sig=REDACTED&sv=1'
    """
    spans = []
    for pattern in _PAIRS:
        for m in pattern.finditer(text):
            name = m.groupdict().get("name")
            if m.group("value") and (name is None or is_secret_name(name)):
                spans.append(m.span("value"))
    out, at = [], 0
    for start, end in sorted(spans):  # overlapping spans (``X-Goog-Signature=`` and ``Signature=``) are one
        if end > at:
            out += [text[at:start], MASK] if start >= at else []
            at = end
    return "".join(out) + text[at:]


def redact(value: Any) -> Any:
    """``value`` with every credential inside it redacted: texts, and dicts, lists, tuples at any depth."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and is_secret_name(k) and v is not None else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """Redacts every record of the logger it is added to (libraries that log URLs: urllib3's request lines).

    >>> log = logging.getLogger("example.urls")
    >>> log.addFilter(RedactingFilter())
    >>> record = log.makeRecord(log.name, logging.DEBUG, "f", 1, '"POST /x?pwd=%s HTTP/1.1"', ("P",), None)
    >>> log.filter(record), record.getMessage()
    (True, '"POST /x?pwd=REDACTED HTTP/1.1"')
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
