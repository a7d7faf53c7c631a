"""AWS Rekognition ``DetectLabels`` through boto3 (boto3 signs the requests; no hand-written SigV4).

The class is ``Labels[0].Name`` (Rekognition's order, first on ties); no labels is "none".
Credentials and region: boto3's usual chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, profiles, ``AWS_DEFAULT_REGION``); ``endpoint_url=`` points it elsewhere.
boto3's own retries are switched off: the shared client layer retries (one policy for every vendor).
"""

from __future__ import annotations

import threading

from . import register_remote_api
from .adapters import Adapter, RemoteError, Retryable, parse_retry_after
from .wire import Labels

_RETRY_CODES = {"ThrottlingException", "ProvisionedThroughputExceededException", "InternalServerError",
                "ServiceUnavailableException", "LimitExceededException"}


@register_remote_api("aws", summary="AWS Rekognition DetectLabels (boto3)")
class Rekognition(Adapter):
    vendor = "aws"

    def __init__(self, endpoint_url: str | None = None, region: str | None = None, max_labels: int = 10,
                 min_confidence: float | None = None) -> None:
        import boto3

        self.endpoint_url, self.max_labels, self.min_confidence = endpoint_url, int(max_labels), min_confidence
        self.region = region or boto3.session.Session().region_name or "us-east-1"
        self._client = None
        self._lock = threading.Lock()

    def _rekognition(self, timeout: float):
        with self._lock:  # boto3 clients are thread-safe once built; building one is not
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(retries={"total_max_attempts": 1}, connect_timeout=timeout, read_timeout=timeout)
                self._client = boto3.session.Session().client("rekognition", region_name=self.region,
                                                              endpoint_url=self.endpoint_url, config=config)
            return self._client

    def api_id(self) -> str:
        return f"aws|rekognition|{self.region}|{self.endpoint_url or 'default'}|{self.max_labels}|{self.min_confidence}"

    def query(self, png: bytes, timeout: float) -> Labels:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        kwargs = {"Image": {"Bytes": png}, "MaxLabels": self.max_labels}
        if self.min_confidence is not None:
            kwargs["MinConfidence"] = float(self.min_confidence)
        try:
            answer = self._rekognition(timeout).detect_labels(**kwargs)
        except NoCredentialsError as exc:
            raise RemoteError("remote:aws found no AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from exc
        except ClientError as exc:
            meta = exc.response.get("ResponseMetadata", {})
            status = meta.get("HTTPStatusCode", 0)
            code = exc.response.get("Error", {}).get("Code", "")
            if status == 429 or status >= 500 or code in _RETRY_CODES:
                retry_after = parse_retry_after((meta.get("HTTPHeaders") or {}).get("retry-after"))
                raise Retryable(f"aws: HTTP {status} {code}", retry_after) from exc
            raise RemoteError(f"aws refused the query: HTTP {status} {code}") from exc
        except BotoCoreError as exc:  # timeouts, connection errors, unparsable answers
            raise Retryable(f"aws: {type(exc).__name__}") from exc
        if not isinstance(answer.get("Labels"), list):  # botocore turns an unparsable body into a dict without it
            raise Retryable("aws: answer without a Labels list")
        return [(label["Name"], label.get("Confidence", 0.0) / 100.0) for label in answer["Labels"]]
