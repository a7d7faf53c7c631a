"""Clarifai model outputs (REST ``PostModelOutputs``), by default the general image recognition model.

Request: ``POST {endpoint}/v2/users/{user_id}/apps/{app_id}/models/{model_id}/outputs`` with
``{"inputs": [{"data": {"image": {"base64": <PNG>}}}]}`` and ``Authorization: Key <PAT>``. The class is
``outputs[0].data.concepts[0].name``; no concepts is "none". Credentials: ``CLARIFAI_PAT``.
"""

from __future__ import annotations

from . import register_remote_api
from .adapters import RemoteError, RestAdapter, Retryable, credential
from .wire import Labels, b64

_OK = 10000


@register_remote_api("clarifai", summary="Clarifai's general model")
class Clarifai(RestAdapter):
    vendor = "clarifai"

    def __init__(self, endpoint: str = "https://api.clarifai.com", user_id: str = "clarifai", app_id: str = "main",
                 model_id: str = "general-image-recognition") -> None:
        super().__init__()
        self.url = f"{endpoint.rstrip('/')}/v2/users/{user_id}/apps/{app_id}/models/{model_id}/outputs"
        self._headers = {"Authorization": f"Key {credential('CLARIFAI_PAT', vendor='remote:clarifai')}"}

    def api_id(self) -> str:
        return f"clarifai|{self.url}"

    def query(self, png: bytes, timeout: float) -> Labels:
        answer = self.post(self.url, timeout, self._headers, json={"inputs": [{"data": {"image": {"base64": b64(png)}}}]})
        try:
            status = answer["status"]["code"]
            output = answer["outputs"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise Retryable("clarifai: answer without status and outputs[0]") from exc
        if status != _OK:
            raise RemoteError(f"clarifai refused the image: status {status} {answer['status'].get('description', '')!r}")
        concepts = (output.get("data") or {}).get("concepts") or []
        return [(c["name"], c.get("value", 0.0)) for c in concepts]
