"""A real HTTP server on 127.0.0.1 that answers like the vision APIs, with fault injection.

The "model" is a deterministic function of the decoded PNG (``colour_labels``): the colour channels
ranked by mean intensity ("red", "green", "blue"), or no label at all for a dark image (mean < 0.2).
Faults hit the first attempt of a chosen fraction of images (by a hash of the body, so retries
succeed; with ``always=True`` every attempt draws anew, so an image may never be answered): 429 with
Retry-After, 500, a stall (the server waits ``stall`` s, then answers 503), malformed JSON in a 200.
``answered`` counts, per image digest, the requests that returned labels; ``received`` counts every
request that reached the server. A request to an unknown path gets a 400 that echoes the path and its
query, as real servers' error pages do (a signed URL included).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

NAMES = ("red", "green", "blue")


def colour_labels(png: bytes) -> list[tuple[str, float]]:
    """The served model: channels ranked by mean (first on ties), nothing for a dark image."""
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255.0
    means = arr.reshape(-1, 3).mean(axis=0)
    if means.mean() < 0.2:
        return []
    order = sorted(range(3), key=lambda c: (-means[c], c))
    return [(NAMES[c], float(means[c])) for c in order]


class FaultyVisionServer:
    """Serves Google, Azure, AWS Rekognition, Clarifai and the generic protocol on one port."""

    def __init__(self, keys: dict[str, str] | None = None, faults: dict[str, float] | None = None,
                 retry_after: str = "0", stall: float = 1.0, always: bool = False) -> None:
        self.keys = keys or {}
        self.faults = faults or {}
        self.always = always
        self.received = 0
        self.retry_after, self.stall = retry_after, stall
        self.answered: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                server._handle(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # clients that time out or die hang up: fine
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FaultyVisionServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def total(self) -> int:
        return sum(self.answered.values())

    # --- request handling ---------------------------------------------------------------------
    def _fault_for(self, digest: str, attempt: int) -> str | None:
        if attempt > 0 and not self.always:
            return None
        if self.always:
            digest = hashlib.sha256(f"{digest}/{attempt}".encode()).hexdigest()
        u = int(digest[:8], 16) / 0xFFFFFFFF
        lo = 0.0
        for kind in ("429", "500", "timeout", "malformed"):
            rate = self.faults.get(kind, 0.0)
            if lo <= u < lo + rate:
                return kind
            lo += rate
        return None

    def _send(self, h, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h) -> None:
        with self.lock:
            self.received += 1
        raw = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        path = h.path.split("?")[0]
        try:
            vendor, png = self._parse(h, path, raw)
        except PermissionError:
            return self._send(h, 403, b'{"error": "bad credentials"}')
        except (KeyError, ValueError) as exc:
            return self._send(h, 400, json.dumps({"error": f"bad request {exc}", "url": h.path}).encode())
        digest = hashlib.sha256(png).hexdigest()
        with self.lock:
            attempt = self.attempts[digest]
            self.attempts[digest] += 1
            fault = self._fault_for(digest, attempt)
            if fault:
                self.injected[fault] += 1
        if fault == "429":
            return self._send(h, 429, b'{"__type": "ThrottlingException", "message": "slow down"}',
                              {"Retry-After": self.retry_after})
        if fault == "500":
            return self._send(h, 500, b'{"__type": "InternalServerError", "message": "oops"}')
        if fault == "timeout":
            time.sleep(self.stall)
            return self._send(h, 503, b'{"message": "too late"}')
        if fault == "malformed":
            return self._send(h, 200, b'{"labels": [{"name": "red", "sco')
        labels = colour_labels(png)
        body = json.dumps(self._format(vendor, labels, png)).encode()
        with self.lock:
            self.answered[digest] += 1
        self._send(h, 200, body)

    def _check(self, h, header: str, expected: str | None) -> None:
        if expected is not None and h.headers.get(header) != expected:
            raise PermissionError

    def _parse(self, h, path: str, raw: bytes) -> tuple[str, bytes]:
        if path.endswith("/v1/images:annotate"):
            self._check(h, "X-Goog-Api-Key", self.keys.get("google"))
            req = json.loads(raw)["requests"][0]
            assert req["features"][0]["type"] == "LABEL_DETECTION"
            return "google", base64.b64decode(req["image"]["content"])
        if path.endswith("/vision/v3.2/tag"):
            self._check(h, "Ocp-Apim-Subscription-Key", self.keys.get("azure"))
            return "azure", raw
        if h.headers.get("X-Amz-Target") == "RekognitionService.DetectLabels":
            key_id = self.keys.get("aws")
            if key_id is not None and f"Credential={key_id}/" not in h.headers.get("Authorization", ""):
                raise PermissionError
            return "aws", base64.b64decode(json.loads(raw)["Image"]["Bytes"])
        if path.endswith("/outputs") and "/models/" in path:
            self._check(h, "Authorization", f"Key {self.keys['clarifai']}" if "clarifai" in self.keys else None)
            return "clarifai", base64.b64decode(json.loads(raw)["inputs"][0]["data"]["image"]["base64"])
        if path == "/classify":
            self._check(h, "Authorization", f"Bearer {self.keys['http']}" if "http" in self.keys else None)
            return "http", raw
        raise KeyError(path)

    @staticmethod
    def _format(vendor: str, labels: list[tuple[str, float]], png: bytes) -> dict:
        if vendor == "google":
            ann = [{"mid": f"/m/{n}", "description": n, "score": s, "topicality": s} for n, s in labels]
            return {"responses": [{"labelAnnotations": ann} if ann else {}]}
        if vendor == "azure":
            return {"tags": [{"name": n, "confidence": s} for n, s in labels], "requestId": "req",
                    "metadata": {"format": "Png"}, "modelVersion": "2021-05-01"}
        if vendor == "aws":
            return {"Labels": [{"Name": n, "Confidence": 100 * s, "Instances": [], "Parents": []} for n, s in labels],
                    "LabelModelVersion": "3.0"}
        if vendor == "clarifai":
            return {"status": {"code": 10000, "description": "Ok"},
                    "outputs": [{"status": {"code": 10000}, "data": {"concepts": [
                        {"id": n, "name": n, "value": s, "app_id": "main"} for n, s in labels]}}]}
        return {"labels": [{"name": n, "score": s} for n, s in labels]}
