"""``remote:VENDOR``: vision APIs as hard-label base classifiers (Salman et al. 2020, section 5).

Vendors: ``google`` (Cloud Vision), ``azure`` (AI Vision tag), ``aws`` (Rekognition via boto3),
``clarifai``, ``http`` (a documented JSON protocol for self-hosted models, see ``remote/http.py``).
Every endpoint is configurable. All of them go through one layer (``client.RemoteClassifier``):
concurrency, retries with backoff, a rate limit, a query budget, an on-disk answer cache and a label
vocabulary. Keyword arguments are split: the client's settings (``cache_dir``, ``vocabulary``,
``budget``, ``concurrency``, ``max_retries``, ``backoff``, ``max_backoff``, ``rate_limit``,
``timeout``, ``num_classes``) and the vendor's (``endpoint``, ``max_results``, ``region``, ...).

>>> import classifiers
>>> sorted(n for n in classifiers.list_classifiers() if n == "remote")
['remote']
"""

from __future__ import annotations

import inspect
from typing import Any

from .. import register_classifier
from .aws import Rekognition
from .azure import AzureVision
from .clarifai import Clarifai
from .adapters import Adapter, RemoteError
from .cache import AnswerCache, LabelVocabulary
from .client import BudgetExceeded, RemoteClassifier
from .google import GoogleVision
from .http import HttpJSON
from .wire import NONE_LABEL, decode_png, encode_png

ADAPTERS: dict[str, type[Adapter]] = {"google": GoogleVision, "azure": AzureVision, "aws": Rekognition,
                                      "clarifai": Clarifai, "http": HttpJSON}

_CLIENT_KEYS = set(inspect.signature(RemoteClassifier.__init__).parameters) - {"self", "adapter"}


@register_classifier("remote", summary="remote:google|azure|aws|clarifai|http, a vision API as a hard-label classifier")
def create_remote(identifier: str | None = None, **kwargs: Any) -> RemoteClassifier:
    """``remote:google`` (key from GOOGLE_API_KEY), ``remote:http`` with ``endpoint=URL``, ..."""
    if identifier not in ADAPTERS:
        raise ValueError(f"remote classifier must be one of {', '.join('remote:' + v for v in ADAPTERS)}, "
                         f"got 'remote:{identifier}'")
    adapter_cls = ADAPTERS[identifier]
    client_kwargs = {k: v for k, v in kwargs.items() if k in _CLIENT_KEYS}
    adapter_kwargs = {k: v for k, v in kwargs.items() if k not in _CLIENT_KEYS}
    if identifier == "aws" and "endpoint" in adapter_kwargs:
        adapter_kwargs["endpoint_url"] = adapter_kwargs.pop("endpoint")
    allowed = set(inspect.signature(adapter_cls.__init__).parameters) - {"self"}
    unknown = sorted(set(adapter_kwargs) - allowed)
    if unknown:
        raise ValueError(f"remote:{identifier} got unknown option(s) {unknown}; vendor options: {sorted(allowed)}, "
                         f"client options: {sorted(_CLIENT_KEYS)}")
    return RemoteClassifier(adapter_cls(**adapter_kwargs), **client_kwargs)


__all__ = ["ADAPTERS", "Adapter", "AnswerCache", "BudgetExceeded", "LabelVocabulary", "NONE_LABEL",
           "RemoteClassifier", "RemoteError", "create_remote", "decode_png", "encode_png"]
