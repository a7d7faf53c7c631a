"""`dsmooth certify` against a remote API (classifiers/remote/ through certify/cli.py): labels from the API, cache
beside the results, budget, no secret written anywhere; a run without --label-from-api and bad credentials are
one line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from certify.cli import main
from classifiers.remote import RemoteClassifier
from fixtures import colour_folder
from remote_server import FaultyVisionServer


@pytest.fixture
def server():
    with FaultyVisionServer(keys={"http": "tok-SECRET-1234"}, faults={"500": 0.05, "429": 0.05}) as srv:
        yield srv


@pytest.fixture
def folder(tmp_path) -> Path:
    return colour_folder(tmp_path / "imgs", [("red", (200, 80, 50)), ("blue", (60, 70, 210)), ("dark", (9, 10, 8))])


def _args(endpoint, folder, out, *extra):
    return ["certify", "--classifier", "remote:http", "--classifier-arg", f"endpoint={endpoint}",
            "--classifier-arg", "timeout=30", "--classifier-arg", "backoff=0.01", "--dataset", f"imagefolder:{folder}",
            "--sigma", "0.12", "--n0", "20", "--n", "100", "--batch", "60", "--alpha", "0.001", "--label-from-api",
            "--out", str(out), "--quiet", *extra]


def test_remote_run_labels_from_api_cache_and_budget(server, folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DSMOOTH_HTTP_TOKEN", "tok-SECRET-1234")
    out = tmp_path / "api.tsv"
    # 3 clean labels + 3 x 120 samples (minus duplicates served from cache) exceed a budget of 200.
    assert main(_args(f"{server.url}/classify", folder, out, "--query-budget", "200")) == 3
    assert "query budget of 200 would be exceeded" in capsys.readouterr().err
    done = out.read_text().splitlines()
    assert all(len(line.split("\t")) == 11 for line in done)  # no partial line
    sent_before = server.total

    assert main(_args(f"{server.url}/classify", folder, out, "--query-budget", "1000")) == 0  # resumes from the cache
    rows = [l.split("\t") for l in out.read_text().splitlines()[1:]]
    assert len(rows) == 3
    labels = [int(r[1]) for r in rows]
    vocab = (out.with_suffix(".api-cache") / "labels.json").read_text()
    assert "red" in vocab and "blue" in vocab
    assert rows[0][2] == rows[0][1] and int(rows[0][4]) == 1  # a red image certifies as the API's own label
    assert len(set(labels)) == 3  # red, blue and the empty answer "none" are three classes
    again = server.total
    assert main(_args(f"{server.url}/classify", folder, tmp_path / "again.tsv", "--api-cache", str(out.with_suffix(".api-cache")))) == 0
    assert server.total == again  # a repeated run is answered from the cache alone
    assert again > sent_before
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"tok-SECRET-1234" not in path.read_bytes(), path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _all_bytes(root: Path) -> bytes:
    return b"".join(_files(root).values())


def test_secrets_in_the_endpoint_reach_no_file_message_or_log(folder, tmp_path, monkeypatch, capsys, caplog):
    """Issue 25.4: a signed endpoint with user info: manifest (settings, command, classifier details), lock
    file, answer cache (SQLite, side files), vocabulary, stop message and logs hold no secret."""
    secrets = [b"SIG-SECRET-5150", b"PWD-SECRET-4242", b"INFO-SECRET-7070"]
    monkeypatch.delenv("DSMOOTH_HTTP_TOKEN", raising=False)
    caplog.set_level(logging.DEBUG)  # urllib3 logs each request line, query included, at DEBUG
    during_run = []  # the lock file exists only while a run holds it: look at every file at every query
    answers = RemoteClassifier.answers
    monkeypatch.setattr(RemoteClassifier, "answers", lambda self, pngs: (during_run.append(_files(tmp_path)),
                                                                         answers(self, pngs))[1])
    with FaultyVisionServer(faults={"500": 0.1, "malformed": 0.1}) as srv:
        signed = srv.url.replace("http://", "http://user:INFO-SECRET-7070@") + "/{}?X-Goog-Signature=SIG-SECRET-5150&pwd=PWD-SECRET-4242"
        for path, out, code in (("classify", tmp_path / "api.tsv", 0), ("nowhere", tmp_path / "bad.tsv", 3)):
            argv = _args(signed.format(path), folder, out, "--n", "40")
            monkeypatch.setattr(sys, "argv", ["dsmooth", *argv])
            assert main(argv) == code
    err = capsys.readouterr().err  # the 400 page echoed the signed URL: the stop message carries it redacted
    assert "stopped: http refused the query: HTTP 400" in err and "pwd=REDACTED" in err
    manifest = (tmp_path / "api.json").read_text()
    assert manifest.count("X-Goog-Signature=REDACTED&pwd=REDACTED") == 3  # settings, command, classifier details
    assert b"user:INFO" not in _all_bytes(tmp_path)
    blobs = [b"".join(files.values()) for files in during_run] + [_all_bytes(tmp_path), err.encode(),
                                                                  caplog.text.encode()]
    for blob in blobs:
        for secret in secrets:
            assert secret not in blob
    assert sum(b"REDACTED" in files.get("api.tsv.lock", b"") for files in during_run) > 3  # the lock was looked at
    assert any(name.endswith("answers.sqlite-wal") for files in during_run for name in files)
    assert '"POST /classify?X-Goog-Signature=REDACTED&pwd=REDACTED HTTP/1.1" 200' in caplog.text


def test_query_budget_counts_retries_and_stops_resumably(folder, tmp_path, monkeypatch, capsys):
    """Issue 25.6: a server answering only garbage 200s and 500s receives exactly the budget's requests."""
    monkeypatch.delenv("DSMOOTH_HTTP_TOKEN", raising=False)
    with FaultyVisionServer(faults={"malformed": 0.5, "500": 0.5}, always=True) as srv:
        argv = _args(f"{srv.url}/classify", folder, tmp_path / "api.tsv", "--query-budget", "15",
                     "--classifier-arg", "max_retries=40", "--classifier-arg", "backoff=0")
        assert main(argv) == 3
        assert srv.received == 15
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("dsmooth certify: stopped: query budget of 15 would be exceeded: all 15 requests were "
                           "sent (retries included)") and "resumes from here" in last


# -- refused in one line ---------------------------------------------------------------------------------
def _remote_args(url, folder, out, *extra):
    return ["certify", "--classifier", "remote:http", "--classifier-arg", f"endpoint={url}/classify",
            "--classifier-arg", "timeout=2", "--classifier-arg", "backoff=0.01", "--classifier-arg", "max_retries=2",
            "--dataset", f"imagefolder:{folder}", "--sigma", "0.12", "--n0", "5", "--n", "10", "--batch", "10",
            "--out", str(out), "--quiet", *extra]


def test_remote_without_label_from_api_is_refused(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DSMOOTH_HTTP_TOKEN", "tok")
    with FaultyVisionServer(keys={"http": "tok"}) as server:
        assert main(_remote_args(server.url, folder, tmp_path / "r.tsv")) == 2
    assert "--label-from-api" in capsys.readouterr().err and not (tmp_path / "r.tsv").exists()


def test_bad_credentials_are_one_line_on_the_command_line(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DSMOOTH_HTTP_TOKEN", "wrong")
    with FaultyVisionServer(keys={"http": "tok"}) as server:
        code = main(_remote_args(server.url, folder, tmp_path / "r.tsv", "--label-from-api"))
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err
    assert "HTTP 403 (not authorized): check the API credentials" in err.strip().splitlines()[-1]



def test_a_remote_api_under_several_processes_is_refused_before_anything_is_sent(server, folder, tmp_path, monkeypatch,
                                                                                 capsys):
    """Under `accelerate launch` each process numbered the API's labels its own way: a green image was written as
    certified class 1 = "red" in the merged file. One process it is (its requests are concurrent anyway)."""
    import certify.pipeline as pipeline

    monkeypatch.setenv("DSMOOTH_HTTP_TOKEN", "tok-SECRET-1234")
    monkeypatch.setattr(pipeline, "distributed_context", lambda device=None: (0, 2, lambda: None, "cpu"))
    out = tmp_path / "api.tsv"
    assert main(_args(f"{server.url}/classify", folder, out)) == 2
    assert "several processes would number the labels each their own way" in capsys.readouterr().err
    assert server.total == 0 and not out.exists() and not out.with_suffix(".api-cache").exists()


def test_a_sequential_run_sends_no_request_past_a_stop(server, folder, tmp_path, monkeypatch):
    """The look-ahead drew 480 samples (each a request) for 120 used on 4 images, and --query-budget refused runs
    that fit; a classifier paid by the query is never looked ahead for, and the certificates are the same."""
    monkeypatch.setenv("DSMOOTH_HTTP_TOKEN", "tok-SECRET-1234")
    out = tmp_path / "seq.tsv"
    args = _args(f"{server.url}/classify", folder, out, "--mode", "sequential", "--radii", "0.05")
    args[args.index("--n") + 1], args[args.index("--batch") + 1] = "1000", "500"
    args.remove("--n0"), args.remove("20")
    assert main(args) == 0
    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    used = sum(int(r[header.index("n")]) + int(r[header.index("n0")]) for r in rows)
    packing = json.loads(out.with_suffix(".json").read_text())["packing"]
    assert packing["samples_drawn"] == used < 1000, (packing, used)
