"""The third-party libraries' hub access and noise: one probe of each host per process, offline mode when the
Hugging Face hub cannot be reached, what the caches hold, and ``--quiet`` for their logs and progress bars.

Offline, huggingface_hub retries every request for about a minute, with a warning per try. One short probe
(:func:`reachable`) decides instead; when it fails, the process is put in the libraries' offline mode
(``HF_HUB_OFFLINE=1`` and its equivalents), so files already cached load at once and missing ones fail at
once. The plugins' preflight checks (``check=`` in :meth:`certify.registry.Registry.register`) use the
lookups here and never download anything.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: The environment variables that put huggingface_hub, transformers and datasets offline.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT = 3.0  # seconds: one attempt, then the host counts as unreachable for the whole process


def hf_endpoint() -> str:
    """The Hugging Face hub's address (``HF_ENDPOINT``, default https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_requested() -> bool:
    """Whether the user (or an earlier probe) put the Hugging Face libraries offline."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_VARIABLES)


@functools.lru_cache(maxsize=None)
def probe(base_url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """One HEAD request to ``base_url`` within ``timeout`` seconds (name lookup included); cached per process.
    Any HTTP answer, an error status included, means the host is there."""
    answered: list[bool] = []

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(base_url, method="HEAD"), timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)
        except Exception:  # no route, no name, refused, timed out: unreachable
            answered.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answered and answered[0])


def reachable(url: str | None = None) -> bool:
    """Whether the host of ``url`` (default: the Hugging Face hub) answers; probed once per process.

    When the hub does not (or offline mode was asked for), the process goes offline (:func:`go_offline`),
    so the libraries read their caches without a retry loop.
    """
    hub = url is None or url.startswith(hf_endpoint())
    if hub and offline_requested():
        return False
    parts = urlsplit(url or hf_endpoint())
    ok = probe(f"{parts.scheme}://{parts.netloc}/")
    if hub and not ok:
        log.info("the Hugging Face hub (%s) cannot be reached; working offline from the local cache", hf_endpoint())
        go_offline()
    return ok


def go_offline() -> None:
    """Set the offline variables for this process (and its children), and in the libraries already imported."""
    for var in OFFLINE_VARIABLES:
        os.environ[var] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        config = sys.modules["datasets"].config
        config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = True


def is_hub_id(text: str) -> bool:
    """``OWNER/NAME`` (a hub repo id), as opposed to a path.

    >>> is_hub_id("google/ddpm-cifar10-32"), is_hub_id("./runs/model"), is_hub_id("/data/x")
    (True, False, False)
    """
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None and ".." not in text


def hub_cached(repo_id: str, filenames: tuple[str, ...], repo_type: str = "model") -> bool:
    """Whether one of ``filenames`` of a hub repo is in the local Hugging Face cache (nothing is fetched)."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo_id.partition("@")
    return any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision or None, repo_type=repo_type), str)
               for f in filenames)


def hub_problems(repo_id: str, filenames: tuple[str, ...], what: str, fix: str, repo_type: str = "model") -> list[str]:
    """``[]`` when a loader will find the repo (cached, or the hub reachable); else why not and ``fix``.
    Probes the hub either way, so that a cached repo is read offline without retries."""
    from huggingface_hub import constants

    online = reachable()
    if online or hub_cached(repo_id, filenames, repo_type):
        return []
    return [f"{what} ({repo_id}): not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub "
            f"({hf_endpoint()}) cannot be reached: {fix}"]


def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub`` keeps a downloaded URL (``$TORCH_HOME/hub/checkpoints/FILE``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1].split("?")[0]


def url_problems(url: str, fix: str) -> list[str]:
    """``[]`` when a weights URL is in torch's hub cache or its host answers; else why not and ``fix``."""
    target = torch_hub_file(url)
    if target.is_file() or reachable(url):
        return []
    return [f"the weights file is not in torch's hub cache ({target}) and {urlsplit(url).netloc} cannot be "
            f"reached: {fix}"]


def missing_package(module: str, install: str) -> list[str]:
    """``[]`` when ``module`` can be imported (looked up, not imported); else the line that installs it.

    >>> missing_package("json", "-"), missing_package("no_such_module_xyz", "pip install xyz")
    ([], ['package no_such_module_xyz missing: pip install xyz'])
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return [] if found else [f"package {module} missing: {install}"]


#: Libraries whose logs and progress bars ``--quiet`` silences, with their verbosity variables.
NOISY_LIBRARIES = {"datasets": "DATASETS_VERBOSITY", "transformers": "TRANSFORMERS_VERBOSITY",
                   "diffusers": "DIFFUSERS_VERBOSITY", "huggingface_hub": "HF_HUB_VERBOSITY", "timm": None}


def quiet_libraries() -> None:
    """Errors only from the libraries' loggers, and no progress bars of theirs: through their environment
    variables (read when a library is imported) and, for those already imported, their own switches."""
    os.environ.update(HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    for name, variable in NOISY_LIBRARIES.items():
        if variable:
            os.environ[variable] = "error"
        logging.getLogger(name).setLevel(logging.ERROR)
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            sys.modules[name].utils.logging.disable_progress_bar()
