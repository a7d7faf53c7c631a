"""Google Cloud Vision ``images:annotate`` with ``LABEL_DETECTION`` (REST).

Request: ``POST {endpoint}`` with ``{"requests": [{"image": {"content": <base64 PNG>}, "features":
[{"type": "LABEL_DETECTION", "maxResults": N}]}]}``. The class is
``responses[0].labelAnnotations[0].description``; a response without ``labelAnnotations`` is "none".
Credentials: an API key in ``GOOGLE_API_KEY`` (sent as the ``X-Goog-Api-Key`` header, never in the
URL) or an OAuth access token in ``GOOGLE_OAUTH_ACCESS_TOKEN`` (``Authorization: Bearer``).
"""

from __future__ import annotations

from . import register_remote_api
from .adapters import RemoteError, RestAdapter, Retryable, credential
from .wire import Labels, b64

ENDPOINT = "https://vision.googleapis.com/v1/images:annotate"


@register_remote_api("google", summary="Google Cloud Vision label detection")
class GoogleVision(RestAdapter):
    vendor = "google"

    def __init__(self, endpoint: str = ENDPOINT, max_results: int = 10) -> None:
        super().__init__()
        self.endpoint, self.max_results = endpoint, int(max_results)
        token = credential("GOOGLE_OAUTH_ACCESS_TOKEN", required=False)
        if token:
            self._headers = {"Authorization": f"Bearer {token}"}
        else:
            self._headers = {"X-Goog-Api-Key": credential("GOOGLE_API_KEY", vendor="remote:google")}

    def api_id(self) -> str:
        return f"google|{self.endpoint}|LABEL_DETECTION|{self.max_results}"

    def query(self, png: bytes, timeout: float) -> Labels:
        body = {"requests": [{"image": {"content": b64(png)},
                              "features": [{"type": "LABEL_DETECTION", "maxResults": self.max_results}]}]}
        answer = self.post(self.endpoint, timeout, self._headers, json=body)
        try:
            response = answer["responses"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise Retryable("google: answer without responses[0]") from exc
        if "error" in response:
            err = response["error"]
            code = err.get("code") if isinstance(err, dict) else None
            if code in (4, 8, 13, 14):  # DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE
                raise Retryable(f"google: per-image error {code}")
            raise RemoteError(f"google refused the image: {str(err)[:200]}")
        return [(a["description"], a.get("score", 0.0)) for a in response.get("labelAnnotations", [])]
