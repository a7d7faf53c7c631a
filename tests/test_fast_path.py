"""The fast path's options (channels_last, automatic batch size): same certificates, and the automatic batch
is found once per run and kept on resume (torch.compile: tests/test_compile.py)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from certify.settings import RunSettings
from certify.runs import run_certification
from certify.smoothing import Smoothed


class Conv(nn.Module):
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 3))
        self.formats = []

    def forward(self, x):
        self.formats.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.net(x) * 100  # wide margins: equal arithmetic up to rounding gives equal votes


class MemoryBound(nn.Module):
    """A classifier that runs out of memory above ``capacity`` images per batch."""

    num_classes = 2

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.probed = []

    def forward(self, x):
        self.probed.append(len(x))
        if len(x) > self.capacity:
            raise torch.OutOfMemoryError(f"{len(x)} images do not fit")
        return torch.zeros(len(x), 2)


def test_channels_last_gives_the_same_certificate_and_nhwc_batches():
    x = torch.rand(3, 8, 8)
    plain = Smoothed(Conv(), sigma=0.25).certify_full(x, 20, 200, 0.001, 50, seed=1)
    f = Conv()
    fast = Smoothed(f, sigma=0.25, channels_last=True)
    assert fast.certify_full(x, 20, 200, 0.001, 50, seed=1) == plain
    assert all(f.formats) and f.net[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_find_batch_size_stops_at_memory_and_limits():
    f = MemoryBound(capacity=300)
    g = Smoothed(f, sigma=0.25)
    assert g.find_batch_size((1, 4, 4), limit=10_000) == 256
    assert f.probed == [16, 32, 64, 128, 256, 512]
    assert g.find_batch_size((1, 4, 4), limit=100) == 64
    assert g.find_batch_size((1, 4, 4), limit=10_000, cpu_limit=128) == 128
    with pytest.raises(RuntimeError, match="not even a batch of 16"):
        Smoothed(MemoryBound(capacity=8), sigma=0.25).find_batch_size((1, 4, 4), limit=1000)


def test_auto_batch_is_probed_once_and_reused_on_resume(tmp_path, monkeypatch):
    data = [(torch.rand(1, 4, 4), 0) for _ in range(4)]
    g = Smoothed(MemoryBound(capacity=300), sigma=0.25)
    settings = RunSettings(classifier="toy", dataset="toy", sigma=0.25, n0=10, n=1000, batch="auto")
    out = tmp_path / "r.tsv"
    run_certification(g, data[:2], settings, out, quiet=True)  # as if killed after two images
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["settings"]["batch"] == 256 and manifest["settings"]["options"]["batch"] == "auto"

    # Resumed on a machine where more would fit: the run keeps the batch it started with.
    g.classifier.capacity = 10_000
    run_certification(g, data, settings, out, quiet=True)
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["batch"] == 256
    assert len(out.read_text().splitlines()) == 5
    fixed = RunSettings(**{**settings.__dict__, "batch": 256})
    with pytest.raises(ValueError, match="options"):
        run_certification(g, data, fixed, out, quiet=True)


@pytest.mark.parametrize("batch", [0, -3, "big", 2.5])
def test_bad_batch_is_named(batch):
    with pytest.raises(ValueError, match=r"batch must be an int >= 1 or 'auto'"):
        RunSettings(classifier="toy", dataset="toy", sigma=0.25, batch=batch).validate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_no_host_sync_inside_the_sampling_loop():
    g = Smoothed(Conv().cuda(), sigma=0.25, autocast_dtype=torch.bfloat16, channels_last=True)
    x = torch.rand(3, 8, 8, device="cuda")
    gen = g.generator(0, 0, "estimation")
    g.sample_counts(x, 100, 50, gen)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        g.sample_counts(x, 1000, 100, gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
