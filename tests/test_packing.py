"""certify/packing.py: several images' noise chunks share each forward pass, and every image's results are those
it gets alone (the same streams, the same schedule), for the sequential tests and the anytime radius."""

from __future__ import annotations

import json

import torch
from torch import nn

from certify.sequential import certify_anytime, certify_anytime_many, certify_at, certify_at_many
from certify.smoothing import Smoothed

SIGMA = 0.5


def test_packing_does_not_change_results():
    """Several images per batch give exactly the per-image results (same step, same streams)."""
    torch.manual_seed(0)
    g = Smoothed(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), sigma=SIGMA, num_classes=3)
    xs = [torch.rand(1, 2, 2) for _ in range(7)]
    packed = list(certify_at_many(g, xs, [0.1, 0.3], 0.01, 600, batch_size=120, seed=3, indices=range(10, 17),
                                  n0=30, step=40))
    alone = [certify_at(g, x, [0.1, 0.3], 0.01, 600, batch_size=40, seed=3, index=i, n0=30)
             for i, x in zip(range(10, 17), xs)]
    assert packed == alone
    packed = list(certify_anytime_many(g, xs, 0.01, 600, batch_size=100, seed=3, n0=30, step=25))
    alone = [certify_anytime(g, x, 0.01, 600, batch_size=25, seed=3, index=i, n0=30) for i, x in enumerate(xs)]
    assert packed == alone


def test_a_run_fills_its_batches_and_certifies_each_digit_as_it_would_alone(tmp_path):
    """`dsmooth certify --mode sequential` on 40 digits, batch 1,000, the mode's defaults: the run loop packs the
    digits' checks (with look-ahead) so that its forward passes are >= 80% full, and every line is the
    certificate `certify_at` gives that digit alone, one image per call (issue 27: before, 2% full)."""
    from certify.cli import main
    from certify.data import create_dataset
    from classifiers import create_classifier

    out = tmp_path / "seq.tsv"
    assert main(["certify", "--mode", "sequential", "--radii", "0.25,0.5,1.0", "--classifier", "small-cnn.mnist5k",
                 "--dataset", "mnist5k:test", "--sigma", "0.25", "--n", "100000", "--batch", "1000", "--skip", "25",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    manifest = json.loads(out.with_suffix(".json").read_text())
    packing, o = manifest["packing"], manifest["settings"]["options"]
    assert packing["images"] == 40 and packing["batch_fill"] >= 0.8, packing
    assert packing["forward_passes"] <= 1.5 * packing["images"], packing  # one image per call: ~40 passes each
    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    col = {name: i for i, name in enumerate(header)}
    data = create_dataset("mnist5k:test")
    g = Smoothed(create_classifier("small-cnn.mnist5k"), sigma=0.25)
    for row in rows:
        idx = int(row[col["idx"]])
        alone = certify_at(g, data[idx][0], o["radii"], 0.001, 100_000, 1000, seed=0, index=idx, step=o["step"],
                           growth=o["growth"], mixture=o.get("mixture") or "two-sided", futility=o["futility"],
                           boundary=o["boundary"], selection=o["selection"])
        assert (int(row[col["predict"]]), int(row[col["n"]]), int(row[col["n0"]]), int(row[col["nA"]])) == \
            (alone.prediction, alone.n, alone.n0, alone.nA), idx
        assert row[col["certified"]] == ",".join(str(int(c)) for c in alone.certified), idx
