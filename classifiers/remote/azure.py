"""Azure AI Vision (Computer Vision v3.2) ``tag`` operation (REST).

Request: ``POST {endpoint}/vision/v3.2/tag`` with the PNG bytes as ``application/octet-stream`` and the
key in ``Ocp-Apim-Subscription-Key``. The class is ``tags[0].name``; an empty ``tags`` list is "none".
Credentials: ``VISION_KEY`` (or ``AZURE_VISION_KEY``); the resource endpoint from ``endpoint=`` or
``VISION_ENDPOINT`` / ``AZURE_VISION_ENDPOINT``.
"""

from __future__ import annotations

from . import register_remote_api
from .adapters import RestAdapter, Retryable, credential
from .wire import Labels


@register_remote_api("azure", summary="Azure AI Vision tags")
class AzureVision(RestAdapter):
    vendor = "azure"

    def __init__(self, endpoint: str | None = None, api_version: str = "v3.2", language: str = "en") -> None:
        super().__init__()
        base = endpoint or credential("VISION_ENDPOINT", "AZURE_VISION_ENDPOINT", vendor="remote:azure")
        self.url = f"{base.rstrip('/')}/vision/{api_version}/tag"
        self.language = language
        self._headers = {"Ocp-Apim-Subscription-Key": credential("VISION_KEY", "AZURE_VISION_KEY", vendor="remote:azure"),
                         "Content-Type": "application/octet-stream"}

    def api_id(self) -> str:
        return f"azure|{self.url}|{self.language}"

    def query(self, png: bytes, timeout: float) -> Labels:
        answer = self.post(self.url, timeout, self._headers, data=png, params={"language": self.language})
        if not isinstance(answer, dict) or not isinstance(answer.get("tags"), list):
            raise Retryable("azure: answer without a tags list")
        return [(t["name"], t.get("confidence", 0.0)) for t in answer["tags"]]
