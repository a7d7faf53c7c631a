"""Remote vision APIs against a local fault-injecting server: exact counts, resume, budget, secrets."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from certify.smoothing import Smoothed
from classifiers import create_classifier
from classifiers.remote import AnswerCache, BudgetExceeded, LabelVocabulary, RemoteError, encode_png
from classifiers.remote.adapters import Adapter, Retryable, parse_retry_after
from classifiers.remote.client import RemoteClassifier

from remote_server import FaultyVisionServer, colour_labels

SECRETS = {"GOOGLE_API_KEY": "g-SECRET-7f3a91", "VISION_KEY": "az-SECRET-55c2", "CLARIFAI_PAT": "cl-SECRET-0d1e",
           "DSMOOTH_HTTP_TOKEN": "http-SECRET-9b9b", "AWS_ACCESS_KEY_ID": "AKIATESTKEYID0000000",
           "AWS_SECRET_ACCESS_KEY": "aws-SECRET-abcdef0123456789"}
SERVER_KEYS = {"google": SECRETS["GOOGLE_API_KEY"], "azure": SECRETS["VISION_KEY"], "clarifai": SECRETS["CLARIFAI_PAT"],
               "http": SECRETS["DSMOOTH_HTTP_TOKEN"], "aws": SECRETS["AWS_ACCESS_KEY_ID"]}
FAULTS = {"429": 0.05, "500": 0.05, "timeout": 0.02, "malformed": 0.05}
# A generous timeout where the timeout is not what is tested: on a loaded machine a 0.3 s one expired on
# requests the server answered, and the exact counts below failed (a stall ends in a 503, retried anyway;
# test_a_stalled_request_times_out_and_is_retried tests the timeout itself).
FAST = dict(concurrency=4, timeout=30.0, backoff=0.01, max_backoff=0.05)
N0, N, ALPHA, BATCH = 20, 100, 0.001, 50


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("GOOGLE_OAUTH_ACCESS_TOKEN", raising=False)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def _endpoint(vendor: str, url: str) -> dict:
    return {"google": {"endpoint": f"{url}/v1/images:annotate"}, "azure": {"endpoint": url},
            "aws": {"endpoint": url}, "clarifai": {"endpoint": url}, "http": {"endpoint": f"{url}/classify"}}[vendor]


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    base = [(0.8, 0.35, 0.2), (0.25, 0.3, 0.85), (0.04, 0.05, 0.03)]  # reddish, bluish, dark ("none")
    return [(torch.tensor(c).view(3, 1, 1) + 0.05 * torch.rand(3, 16, 16, generator=g)).clamp(0, 1) for c in base]


class LocalColour(nn.Module):
    """The served model run locally on the same PNG bytes: the reference for exact certificates."""

    def __init__(self) -> None:
        super().__init__()
        self.vocabulary = LabelVocabulary(64)
        self.num_classes = 64

    def forward(self, images):
        tops = [(colour_labels(encode_png(x)) or [("none", 0)])[0][0] for x in images]
        return torch.tensor([self.vocabulary.id(t) for t in tops])


def _certify(clf, i: int, x: torch.Tensor):
    return Smoothed(clf, sigma=0.25).certify_full(x, n0=N0, n=N, alpha=ALPHA, batch_size=BATCH, seed=0, index=i)


def _files_text(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_certify_three_images_exact_counts_cache_and_no_secrets(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    images = _images()
    local = LocalColour()
    expected = [_certify(local, i, x) for i, x in enumerate(images)]
    with FaultyVisionServer(keys=SERVER_KEYS, faults=FAULTS, stall=0.2) as server:
        clf = create_classifier("remote:google", cache_dir=str(tmp_path / "cache"), **_endpoint("google", server.url), **FAST)
        seen = []
        clf.register_forward_hook(lambda m, args, out: seen.append(len(out)))
        for i, x in enumerate(images):
            before, calls = server.total, len(seen)
            cert = _certify(clf, i, x)
            assert server.total - before == N0 + N  # answered queries for this image, retried failures excluded
            assert sum(seen[calls:]) == N0 + N  # labels handed to the engine
            ref = expected[i]
            assert (cert.nA, cert.radius, cert.pA_lower) == (ref.nA, ref.radius, ref.pA_lower)
            assert clf.labels[cert.prediction] == local.vocabulary.labels[ref.prediction]
        assert set(server.answered.values()) == {1}  # no noisy image was answered twice
        assert all(server.injected[k] > 0 for k in FAULTS), server.injected
        assert [clf.labels[_certify(clf, i, x).prediction] for i, x in enumerate(images)] == ["red", "blue", "none"]
        # a repeated run (new client, same cache folder) re-sends nothing and certifies the same
        again = create_classifier("remote:google", cache_dir=str(tmp_path / "cache"), **_endpoint("google", server.url), **FAST)
        total = server.total
        assert [_certify(again, i, x) for i, x in enumerate(images)] == [_certify(clf, i, x) for i, x in enumerate(images)]
        assert server.total == total and again.queries_sent == 0
        assert json.loads((tmp_path / "cache" / "labels.json").read_text())["labels"][0] == "none"
        (tmp_path / "describe.json").write_text(json.dumps(clf.describe()))
    assert "retry" in caplog.text  # faults were logged ...
    blob = _files_text(tmp_path) + caplog.text.encode()
    for secret in SECRETS.values():  # ... and no credential was written anywhere
        assert secret.encode() not in blob


CHILD = textwrap.dedent("""
    import sys, torch
    from certify.smoothing import Smoothed
    from classifiers import create_classifier
    sys.path.insert(0, sys.argv[3])
    from test_remote import _images
    torch.set_num_threads(1)
    clf = create_classifier("remote:http", endpoint=sys.argv[1], cache_dir=sys.argv[2], concurrency=4)
    for i, x in enumerate(_images()):
        Smoothed(clf, sigma=0.25).certify_full(x, n0=20, n=100, alpha=0.001, batch_size=50, seed=0, index=i)
    print("finished")
""")


def test_killed_run_resumes_without_resending(tmp_path):
    images = _images()
    cache = tmp_path / "cache"
    with FaultyVisionServer(keys=SERVER_KEYS) as server:
        child = subprocess.Popen([sys.executable, "-c", CHILD, f"{server.url}/classify", str(cache),
                                  str(Path(__file__).parent)], env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 600  # only a failing run waits this long
        while server.total < N0 + N + 50 and child.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        assert child.poll() is None, "the child finished before it could be killed"
        os.kill(child.pid, signal.SIGKILL)  # mid-way through image 1
        child.wait()
        killed_at = server.total
        cached = len(AnswerCache(cache))
        assert N0 + N <= cached <= killed_at < 3 * (N0 + N)
        clf = create_classifier("remote:http", endpoint=f"{server.url}/classify", cache_dir=str(cache), concurrency=4)
        _certify(clf, 0, images[0])
        assert clf.queries_sent == 0  # the finished image costs nothing
        for i in (1, 2):
            _certify(clf, i, images[i])
        assert clf.queries_sent == 3 * (N0 + N) - cached  # only what the cache lacked was sent
        lost_in_flight = killed_at - cached  # answered while the child was being killed, never stored
        assert 0 <= lost_in_flight <= 4  # at most the in-flight requests (concurrency)
        assert sum(v - 1 for v in server.answered.values()) == lost_in_flight
        assert len(server.answered) == 3 * (N0 + N)


def test_budget_refuses_before_sending_and_resumes(tmp_path):
    images = _images()
    cache = str(tmp_path / "cache")
    budget = 2 * (N0 + N) + 30
    with FaultyVisionServer(keys=SERVER_KEYS) as server:
        clf = create_classifier("remote:http", endpoint=f"{server.url}/classify", cache_dir=cache, budget=budget)
        results = [_certify(clf, i, images[i]) for i in (0, 1)]
        assert clf.remaining == 30
        with pytest.raises(BudgetExceeded, match=r"only 10 remain"):
            results.append(_certify(clf, 2, images[2]))  # selection (20) fits, the first estimation batch does not
        assert len(results) == 2 and server.total == 2 * (N0 + N) + N0 <= budget
        with pytest.raises(BudgetExceeded, match="only 10 remain"):
            clf.require(11)
        more = create_classifier("remote:http", endpoint=f"{server.url}/classify", cache_dir=cache, budget=N)
        _certify(more, 2, images[2])  # the 20 answers bought before are reused
        assert more.queries_sent == N and more.remaining == 0


@pytest.mark.parametrize("vendor", ["google", "azure", "aws", "clarifai", "http"])
def test_each_vendor_format_with_faults(tmp_path, vendor):
    pytest.importorskip("boto3") if vendor == "aws" else None
    images = [torch.tensor(c).view(3, 1, 1).expand(3, 8, 8).clone()
              for c in [(0.9, 0.1, 0.1), (0.1, 0.9, 0.2), (0.1, 0.2, 0.9), (0.05, 0.05, 0.05), (0.9, 0.1, 0.1)]]
    faults = {"429": 0.25, "500": 0.25, "malformed": 0.25}
    with FaultyVisionServer(keys=SERVER_KEYS, faults=faults) as server:
        clf = create_classifier(f"remote:{vendor}", **_endpoint(vendor, server.url), **FAST)
        ids = clf(torch.stack(images))
        assert [clf.labels[i] for i in ids] == ["red", "green", "blue", "none", "red"]
        assert server.total == 4  # the repeated image was sent once
        assert clf.clean_label(images[1]) == int(ids[1]) and server.total == 4


def test_budget_caps_every_request_sent_retries_included():
    """Issue 25.6: garbage 200s and 500s are retried and each attempt counts; 8 threads retrying at once."""
    images = torch.stack([torch.full((3, 4, 4), v) for v in torch.linspace(0.3, 0.9, 8).tolist()])
    with FaultyVisionServer(faults={"malformed": 0.5, "500": 0.5}, always=True) as server:
        clf = create_classifier("remote:http", endpoint=f"{server.url}/classify", budget=25, max_retries=60,
                                backoff=0.0, concurrency=8)
        with pytest.raises(BudgetExceeded, match="query budget of 25 would be exceeded: all 25 requests were sent"):
            clf(images)
        assert server.received == 25 == clf.queries_sent and clf.remaining == 0 and server.total == 0
        assert "requests sent, retries included" in clf.describe()["budget_counts"]
        with pytest.raises(BudgetExceeded, match="only 0 remain"):
            clf(images[:1])
        assert server.received == 25


def test_a_stalled_request_times_out_and_is_retried(caplog):
    x = torch.full((1, 3, 4, 4), 0.7)
    with FaultyVisionServer(faults={"timeout": 1.0}, stall=30.0) as server:  # the first attempt never answers in time
        clf = create_classifier("remote:http", endpoint=f"{server.url}/classify", timeout=1.0, backoff=0.0)
        label = int(clf(x)[0])
        assert clf.labels[label] == "red" and server.injected["timeout"] == 1 and server.total == 1
    assert "http: timed out after 1 s; retry 1/" in caplog.text


@pytest.mark.parametrize("planted", ["cache", "answers.sqlite", "answers.sqlite-wal", "answers.sqlite-shm",
                                     "labels.json"])
def test_links_in_the_answer_cache_are_refused_before_anything_is_written(tmp_path, planted):
    """Issue 25.5: a linked cache folder, database, SQLite side file or vocabulary is never written through."""
    victim, cache = tmp_path / "victim", tmp_path / "cache"
    if planted == "cache":
        victim.mkdir()
        cache.symlink_to(victim, target_is_directory=True)
    else:
        victim.write_text('{"capacity": 8, "labels": ["none"]}')
        cache.mkdir()
        (cache / planted).symlink_to(victim)
    with FaultyVisionServer() as server:
        with pytest.raises(ValueError, match=rf"{planted} is a symbolic link; refusing to write through it .* another "
                                             "--api-cache$"):
            clf = create_classifier("remote:http", endpoint=f"{server.url}/classify", cache_dir=str(cache))
            clf(torch.full((1, 3, 4, 4), 0.7))
        assert server.received == 0
    if planted == "cache":
        assert list(victim.iterdir()) == []
    else:
        assert victim.read_text() == '{"capacity": 8, "labels": ["none"]}' and [p.name for p in cache.iterdir()] == [planted]


def test_retry_after_is_honoured_and_permanent_errors_stop(tmp_path, monkeypatch):
    x = torch.full((1, 3, 4, 4), 0.7)
    with FaultyVisionServer(keys=SERVER_KEYS, faults={"429": 1.0}, retry_after="1") as server:
        clf = create_classifier("remote:http", endpoint=f"{server.url}/classify", backoff=0.0)
        start = time.monotonic()
        clf(x)
        assert time.monotonic() - start >= 1.0 and server.injected["429"] == 1
    with FaultyVisionServer(keys=SERVER_KEYS, faults={"500": 1.0}) as server:
        clf = create_classifier("remote:http", endpoint=f"{server.url}/classify", max_retries=0)
        with pytest.raises(RemoteError, match="gave up after 1 attempts"):
            clf(x)
    monkeypatch.setenv("GOOGLE_API_KEY", "wrong-key")
    with FaultyVisionServer(keys=SERVER_KEYS) as server:
        clf = create_classifier("remote:google", endpoint=f"{server.url}/v1/images:annotate")
        with pytest.raises(RemoteError, match="HTTP 403") as info:
            clf(x)
        assert "wrong-key" not in str(info.value) and server.total == 0


def test_bad_options_are_value_errors(monkeypatch):
    with pytest.raises(ValueError, match="remote:google"):
        create_classifier("remote:bing")
    with pytest.raises(ValueError, match="unknown option"):
        create_classifier("remote:http", endpoint="http://127.0.0.1:1/x", colour="red")
    monkeypatch.delenv("CLARIFAI_PAT")
    with pytest.raises(ValueError, match="CLARIFAI_PAT"):
        create_classifier("remote:clarifai")
    with pytest.raises(ValueError, match="budget"):
        create_classifier("remote:http", endpoint="http://127.0.0.1:1/x", budget=-1)


def test_close_releases_threads_and_cache_and_a_run_calls_it(tmp_path, monkeypatch):
    with FaultyVisionServer(keys=SERVER_KEYS, faults={}) as server:
        clf = create_classifier("remote:http", cache_dir=str(tmp_path / "cache"), **_endpoint("http", server.url), **FAST)
        first = clf(_images()[0][None])
        clf.close()
        clf.close()  # idempotent
        assert clf._pool is None and clf.cache._db is None
        assert torch.equal(clf(_images()[0][None]), first)  # answered from memory, nothing re-sent
        assert server.total == 1

    import certify.pipeline as pipeline
    from certify.settings import RunSettings

    closed = []

    class Closing(nn.Module):
        num_classes = 10

        def forward(self, x):
            return torch.zeros(len(x), 10).index_fill_(1, torch.tensor([3]), 1.0)

        def close(self):
            closed.append(True)

    monkeypatch.setattr(pipeline, "build_smoothed", lambda *a, **k: Smoothed(Closing(), sigma=0.25))
    settings = RunSettings(classifier="small-cnn", dataset="digits", sigma=0.25, n0=10, n=20, batch=20, max=1)
    pipeline.certify_dataset(settings, tmp_path / "run.tsv", quiet=True)
    assert closed == [True]


# -- answers that are malformed, refused or late; the cache holds no credentials ---------------------------
class ScriptedAPI(Adapter):
    """An adapter that answers from a script: each item an answer or an exception to raise."""

    vendor = "scripted"

    def __init__(self, *script) -> None:
        self.script, self.calls = list(script), 0

    def api_id(self) -> str:
        return "scripted|https://api.example/v1?key=SECRET"

    def query(self, png, timeout):
        item = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(item, Exception):
            raise item
        return item


IMAGE = torch.rand(1, 3, 4, 4)


@pytest.mark.parametrize("answer", [[{"nam": "cat"}], [("cat",)], [("cat", "high")], None, [("cat", None)]])
def test_malformed_answers_are_retried_then_one_clear_error(answer):
    clf = RemoteClassifier(ScriptedAPI(answer), max_retries=2, backoff=0.0)
    with pytest.raises(RemoteError, match=r"gave up after 3 attempts \(scripted: malformed answer .*resume"):
        clf(IMAGE)


def test_retry_after_infinite_or_an_hour_stops_with_a_resumable_message():
    assert parse_retry_after("inf") == math.inf
    for wait in (math.inf, 3600.0):
        clf = RemoteClassifier(ScriptedAPI(Retryable("HTTP 429", wait), [("cat", 1.0)]), backoff=0.0, max_retry_wait=60)
        with pytest.raises(RemoteError, match=r"asks to wait .* more than max_retry_wait=60 s; stopped.*resumed"):
            clf(IMAGE)
    clf = RemoteClassifier(ScriptedAPI(Retryable("HTTP 429", 0.01), [("cat", 1.0)]), backoff=0.0)
    assert clf(IMAGE).tolist() == [1]  # a short wait is simply honoured


def test_the_api_cache_holds_no_credentials(tmp_path):
    clf = RemoteClassifier(ScriptedAPI([("cat", 1.0)]), cache_dir=tmp_path / "cache")
    clf(IMAGE)
    rows = sqlite3.connect(str(tmp_path / "cache" / "answers.sqlite")).execute("SELECT api FROM answers").fetchall()
    assert rows and all("SECRET" not in r[0] for r in rows)
    assert "SECRET" not in json.dumps(clf.describe())


def test_an_api_that_keeps_answering_500_gives_up_with_a_resumable_message():
    clf = RemoteClassifier(ScriptedAPI(Retryable("http: HTTP 500")), max_retries=3, backoff=0.0)
    with pytest.raises(RemoteError, match=r"gave up after 4 attempts \(http: HTTP 500\).*run the same command again"):
        clf(IMAGE)

