"""certify/redact.py: one rule decides what a credential is (issue 25 item 4); every record (manifest, lock, answer
cache, compare report) follows it, whatever form the secret takes (URL user info, query, flag, dict key)."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

import classifiers
from certify.cli import main
from certify.redact import MASK, is_secret_name, redact
from certify.results import OutputLock
from certify.runs import run_certification
from classifiers.remote import AnswerCache
from fixtures import toy_images, toy_pipeline, toy_run, toy_settings


@pytest.mark.parametrize("name", ["X-Goog-Signature", "x_goog_credential", "X-Amz-Security-Token", "X-AMZ-SIGNATURE",
                                  "accessToken", "apiKey", "APIKey", "apikey", "api-key", "Ocp-Apim-Subscription-Key",
                                  "pwd", "PASSWD", "Password", "pass", "client_secret", "Credentials", "sig", "auth",
                                  "Authorization", "oauth_token", "private_key_id", "sessionToken", "code",
                                  "X%2DGoog%2DSignature"])
def test_credential_names_by_rule(name):
    assert is_secret_name(name)
    assert redact(f"https://h/p?a=1&{name}=S3CR3T&b=2") == f"https://h/p?a=1&{name}={MASK}&b=2"


@pytest.mark.parametrize("name", ["model", "max_results", "sigma", "signed", "passes", "lowpass", "keyframes",
                                  "region", "X-Amz-Date", "X-Amz-SignedHeaders", "author", "zip_code", "endpoint"])
def test_other_names_are_kept(name):
    assert not is_secret_name(name)
    assert redact(f"https://h/p?{name}=v&x=1") == f"https://h/p?{name}=v&x=1"


def test_every_form_a_secret_takes_in_a_text():
    text = ("dsmooth certify --classifier-arg endpoint=http://u:INFO@h:8/x?X-Goog-Signature=SIG&pwd=PW|LABELS "
            "--api-key KEY --client-secret=CS; url: /x?token=TOK (got {'apiKey': 'AK', \"pass\": \"PS\"})")
    out = redact(text)
    for secret in ("INFO", "SIG", "PW|", "KEY", "CS", "TOK", "AK", "PS"):
        assert secret not in out.replace(MASK, "")
    assert out.count(MASK) == 8 and "|LABELS" in out and "endpoint=http://" in out
    assert redact(out) == out  # idempotent: redacting a record twice changes nothing


def test_secret_keys_in_recorded_settings_are_masked_whatever_their_value():
    settings = {"classifier_kwargs": {"pwd": "P", "api_key": 1234, "credentials": {"user": "u"}, "token": None,
                                      "endpoint": "http://h/x?sig=abc&sv=1", "max_results": 5}}
    assert redact(settings) == {"classifier_kwargs": {"pwd": MASK, "api_key": MASK, "credentials": MASK, "token": None,
                                                      "endpoint": f"http://h/x?sig={MASK}&sv=1", "max_results": 5}}


def _toy():
    settings = toy_settings(n=20, batch=20, options={"classifier_kwargs": {
        "pwd": "PWD-SECRET-1", "apiKey": "AK-SECRET-2", "endpoint": "https://h/v1?X-Goog-Signature=SIG-SECRET-3"}})
    return toy_pipeline(), toy_images(2), settings


def test_manifest_and_lock_record_no_secret_and_an_old_manifest_resumes_redacted(tmp_path, monkeypatch):
    g, data, s = _toy()
    monkeypatch.setattr(sys, "argv", ["dsmooth", "certify", "--classifier-arg", "pwd=PWD-SECRET-1", "--classifier-arg",
                                      "endpoint=https://h/v1?X-Goog-Signature=SIG-SECRET-3"])
    lock = OutputLock(tmp_path / "r.tsv")
    assert lock.acquire() is None
    held = lock.path.read_text()
    lock.release()
    out = run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    blob = held + (tmp_path / "r.json").read_text()
    assert "SECRET" not in blob and blob.count(MASK) >= 5
    # a manifest written before this rule (secrets in plain text) resumes, and is rewritten redacted
    manifest = json.loads((tmp_path / "r.json").read_text())
    manifest["settings"] = s.record()
    (tmp_path / "r.json").write_text(json.dumps(manifest))
    run_certification(g, data + data, s, out, quiet=True)
    assert "SECRET" not in (tmp_path / "r.json").read_text()


def test_credentials_in_urls_never_reach_the_manifest(tmp_path, monkeypatch):
    g, data, s = toy_run(2)
    s.options = {"classifier_kwargs": {"endpoint": "https://user:pw@api.example/v1?key=SECRET&model=m"}}
    monkeypatch.setattr(sys, "argv", ["dsmooth", "certify", "--classifier-arg", "endpoint=https://h/x?token=SECRET"])
    out = run_certification(g, data, s, tmp_path / "r.tsv", quiet=True)
    manifest = (tmp_path / "r.json").read_text()
    assert "SECRET" not in manifest and "pw@" not in manifest and "model=m" in manifest
    run_certification(g, data + data, s, out, quiet=True)  # resumes: redacted settings compare equal



def test_the_cache_key_of_an_id_without_secrets_is_unchanged():
    # the key hashes the id as given: caches written before redaction existed keep their keys, and two
    # endpoints that differ only in a secret never share answers
    assert AnswerCache.key("http|http://127.0.0.1:8000/classify", b"png") == \
        "2ada28c1a374ed193e18c4fda0251d551129f35b3a623f7c4ea347fa10fc1531"
    signed = "http|http://127.0.0.1:8000/classify?sig=A"
    assert AnswerCache.key(signed, b"png") != AnswerCache.key(redact(signed), b"png")


def test_a_compare_report_records_no_secret(tmp_path, monkeypatch, cnn_dir):
    create = classifiers.create_classifier  # a plugin that takes a password, as a third-party one may
    monkeypatch.setattr(classifiers, "create_classifier", lambda spec, pwd=None, **kwargs: create(spec, **kwargs))
    config = {"dataset": "digits:test", "n0": 10, "n": 20, "batch": 20, "images": 2, "radii": [0, 0.1],
              "pipelines": [{"name": "a", "classifier": f"small-cnn:{cnn_dir}", "sigma": 0.25,
                             "classifier_kwargs": {"pwd": "PWD-SECRET-9"}}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["compare", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "report"), "--quiet"]) == 0
    assert '"pwd": "REDACTED"' in (tmp_path / "report" / "README.md").read_text()
    for path in (tmp_path / "report").rglob("*"):
        assert path.is_dir() or b"PWD-SECRET-9" not in path.read_bytes(), path
