"""A generic JSON protocol for self-hosted models (``remote:http``).

Protocol (what a server must implement):

- Request: ``POST {endpoint}``, body = the PNG bytes, ``Content-Type: image/png``; when the
  environment variable ``DSMOOTH_HTTP_TOKEN`` is set it is sent as ``Authorization: Bearer <token>``.
- Answer ``200``: ``{"labels": [{"name": "tabby cat", "score": 0.93}, ...]}``, best first; the class is
  ``labels[0].name``; an empty list is the class "none".
- ``429`` / ``5xx`` (optionally with ``Retry-After``) are retried; other ``4xx`` stop the run.
"""

from __future__ import annotations

from . import register_remote_api
from .adapters import RestAdapter, Retryable, credential
from .wire import Labels


@register_remote_api("http", summary="a self-hosted model behind the documented JSON protocol")
class HttpJSON(RestAdapter):
    vendor = "http"

    def __init__(self, endpoint: str | None = None) -> None:
        super().__init__()
        if not endpoint:
            raise ValueError("remote:http needs endpoint='http(s)://host:port/path'")
        self.endpoint = endpoint
        token = credential("DSMOOTH_HTTP_TOKEN", required=False)
        self._headers = {"Content-Type": "image/png", **({"Authorization": f"Bearer {token}"} if token else {})}

    def api_id(self) -> str:
        return f"http|{self.endpoint}"

    def query(self, png: bytes, timeout: float) -> Labels:
        answer = self.post(self.endpoint, timeout, self._headers, data=png)
        labels = answer.get("labels") if isinstance(answer, dict) else None
        if not isinstance(labels, list):
            raise Retryable("http: answer without a labels list")
        return [(item["name"], item.get("score", 0.0)) for item in labels]
