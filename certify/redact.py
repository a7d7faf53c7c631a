"""Credentials never reach a file we write: URLs and command lines are redacted before they are recorded.

>>> redact("https://user:pw@api.example.com/v1?key=SECRET&model=x")
'https://REDACTED@api.example.com/v1?key=REDACTED&model=x'
>>> redact({"endpoint": "http://h/p?token=abc", "n": 3})
{'endpoint': 'http://h/p?token=REDACTED', 'n': 3}
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Query parameters (compared lower-case, with '-' as '_') whose values are credentials.
SECRET_PARAMS = {"key", "api_key", "apikey", "token", "access_token", "auth", "authorization", "password",
                 "secret", "client_secret", "signature", "sig", "x_amz_signature", "x_amz_credential",
                 "x_amz_security_token", "session_token", "code"}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
MASK = "REDACTED"


def _secret(name: str) -> bool:
    name = name.lower().replace("-", "_")
    return name in SECRET_PARAMS or name.endswith(("_key", "_token", "_secret", "_password"))


def redact_url(url: str) -> str:
    """The URL with its user info and credential-like query values replaced by ``REDACTED``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = urlencode([(k, MASK if _secret(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                      safe=MASK)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(value: Any) -> Any:
    """``value`` with every URL inside it (strings, nested dicts, lists, tuples) redacted."""
    if isinstance(value, str):
        return _URL.sub(lambda m: redact_url(m.group(0)), value)
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _secret(k) and isinstance(v, str) else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value
