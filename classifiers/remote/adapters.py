"""Vendor adapters: one request/response format each (``Adapter``), HTTPS + JSON plumbing (``RestAdapter``),
the errors they raise and the credentials they read. Credentials read from the environment stay inside
the adapters; a secret the user put in an endpoint (a signed URL) is in the API id, which every writer
redacts (``certify.redact``), and the errors here redact their own messages.
"""

from __future__ import annotations

import email.utils
import logging
import os
import threading
import time
from typing import Any

from certify.errors import ResumableStop
from certify.redact import RedactingFilter, redact

from .wire import Labels


_REDACTING = RedactingFilter()


class RemoteError(ResumableStop):
    """The API refused a query for good (bad credentials, bad request) or retries ran out.

    The message is redacted (``certify.redact``): a server's reply may echo a signed URL.
    """

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class Retryable(Exception):
    """A transient failure (429, 5xx, timeout, connection error, malformed answer); its message is redacted."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(redact(message))
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
        logging.getLogger("urllib3.connectionpool").addFilter(_REDACTING)  # it logs each request's URL (DEBUG)

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
        except requests.Timeout:  # requests' own texts name the URL: not chained, only their redacted gist
            raise Retryable(f"{self.vendor}: timed out after {timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise Retryable(f"{self.vendor}: connection error ({type(exc).__name__}: {str(exc)[:300]})") from None
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
