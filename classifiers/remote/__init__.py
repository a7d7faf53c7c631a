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

from certify.registry import Registry

from .. import register_classifier
from .adapters import Adapter, RemoteError
from .cache import AnswerCache, LabelVocabulary
from .client import BudgetExceeded, RemoteClassifier
from .wire import NONE_LABEL, decode_png, encode_png

#: vision APIs, one adapter module each (``@register_remote_api("NAME")`` on an `Adapter` subclass), found in
#: this package like every plugin (loaded on first use); third-party ones through the entry-point group
REMOTE_APIS = Registry("remote_api", entry_point_group="denoised_smoothing.remote_apis", package=__name__)
register_remote_api = REMOTE_APIS.register

_CLIENT_KEYS = set(inspect.signature(RemoteClassifier.__init__).parameters) - {"self", "adapter"}


@register_classifier("remote", summary="remote:API (google, azure, aws, clarifai, http, or a plugin's), a vision API as "
                                       "a hard-label classifier")
def create_remote(identifier: str | None = None, **kwargs: Any) -> RemoteClassifier:
    """``remote:google`` (key from GOOGLE_API_KEY), ``remote:http`` with ``endpoint=URL``, ..."""
    if identifier not in REMOTE_APIS:
        raise ValueError(f"remote classifier must be one of {', '.join('remote:' + v for v in REMOTE_APIS.list())}, "
                         f"got 'remote:{identifier}'")
    adapter_cls = REMOTE_APIS.entry(identifier).factory
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


create_remote.run_folder = ("cache_dir", ".api-cache")  # a run keeps the answers beside its results (FILE.api-cache/)

__all__ = ["REMOTE_APIS", "Adapter", "AnswerCache", "BudgetExceeded", "LabelVocabulary", "NONE_LABEL",
           "RemoteClassifier", "RemoteError", "create_remote", "decode_png", "encode_png", "register_remote_api"]
