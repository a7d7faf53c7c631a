"""certify/sequential.py and the sequential and anytime modes (certify/modes/sequential.py, anytime.py):
decisions on a grid of radii and the anytime radius against a linear oracle (false certificates at rate
<= alpha and as the DP says), early stops, claims that form a prefix, curtailed selection; then the modes
through `dsmooth certify`: their columns, the README command's defaults, every option checked, recorded and
part of a run's identity. The tables themselves: tests/test_boundary.py; the statistics: test_betting.py."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from certify import Smoothed
from certify.boundary import check_schedule
from certify.cli import main
from certify.sequential import (
    certify_anytime, certify_anytime_many, certify_at, certify_at_many, lower_confidence_bound, sequential_test,
)
from certify.settings import RunSettings
from fixtures import Recording, digits_args, linear_at_distance

SIGMA = 0.5


def _linear_at_distance(distance: float) -> tuple[Smoothed, torch.Tensor]:
    """A smoothed linear classifier and an image at exactly ``distance`` from its boundary."""
    f, x = linear_at_distance(distance, w=(1.0, -2.0, 0.5, 2.0))
    return Smoothed(f, sigma=SIGMA), x


@pytest.mark.parametrize("mixture,boundary", [("two-sided", "ville"), ("one-sided", "ville"), ("one-sided", "exact")])
def test_linear_oracle_sequential_false_certificates_within_alpha(mixture, boundary):
    """Radius just above the true distance: certificates there are false; rate <= alpha (and = the DP's)."""
    alpha, trials, max_n, step = 0.05, 400, 2000, 50
    distance = 0.3
    g, x = _linear_at_distance(distance)
    radii = [0.5 * distance, distance * 1.0001]
    results = list(certify_at_many(g, [x] * trials, radii, alpha, max_n, batch_size=1000, seed=1, step=step,
                                   mixture=mixture, boundary=boundary))
    assert {r.cA for r in results} == {1}
    false = np.array([r.certified[1] for r in results])
    allowance = 3 * math.sqrt(alpha * (1 - alpha) / trials)  # 3 binomial standard errors
    assert false.mean() <= alpha + allowance
    pA = float(norm.cdf(distance / SIGMA))
    test = sequential_test(float(norm.cdf(radii[1] / SIGMA)), alpha, max_n, mixture=mixture,
                           checks=check_schedule(max_n, step), boundary=boundary)
    predicted = test.operating_characteristics(pA)[0]
    assert abs(false.mean() - predicted) <= 4 * math.sqrt(predicted * (1 - predicted) / trials) + 1 / trials
    assert np.mean([r.certified[0] for r in results]) > 0.9  # the smaller, true radius is found


def test_linear_oracle_anytime_radius_within_true_distance():
    alpha, trials = 0.05, 300
    distance = 0.4
    g, x = _linear_at_distance(distance)
    results = list(certify_anytime_many(g, [x] * trials, alpha, max_n=5000, batch_size=2000, seed=2, step=200))
    radii = np.array([r.radius for r in results])
    assert np.mean(radii > distance) <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert np.median(radii) > 0.5 * distance  # and it certifies something sizeable


def test_grid_claims_form_a_prefix(monkeypatch):
    """A larger radius whose test crosses is not claimed when a smaller one's test abstains: that
    rule is what lets one alpha cover the grid when the thresholds are not nested (one-sided)."""
    real = sequential_test

    def crafted(p0, alpha, max_n, *args):
        t = real(p0, alpha, max_n, *args)
        never, always = np.full(max_n + 1, max_n + 1), np.zeros(max_n + 1, dtype=np.int64)
        if p0 < float(norm.cdf(0.3 / SIGMA)):  # the small radius abstains at the first check
            return dataclasses.replace(t, certify_min=never, abstain_max=np.arange(max_n + 1))
        return dataclasses.replace(t, certify_min=always, abstain_max=np.full(max_n + 1, -1))  # large: crosses

    monkeypatch.setattr("certify.sequential.sequential_test", crafted)
    g, x = _linear_at_distance(0.5)
    c = certify_at(g, x, [0.25, 0.5], alpha=0.01, max_n=1000, batch_size=100)
    assert c.certified == (False, False) and c.prediction == -1 and c.n == 100
    c = certify_at(g, x, [0.5], alpha=0.01, max_n=1000, batch_size=100)  # alone, it is claimed
    assert c.certified == (True,)


def test_grid_stops_when_every_radius_is_decided():
    g, x = _linear_at_distance(3.0)  # pA = Phi(6): every draw hits
    c = certify_at(g, x, [0.25, 0.5], alpha=0.001, max_n=10_000, batch_size=10)
    assert c.certified == (True, True) and c.prediction == 1 and c.radius == 0.5
    assert c.n == max(c.decided_at) < 200 and c.nA == c.n and c.n0 == 51  # selection: 51 agreeing draws settle it
    assert norm.cdf(0.5 / SIGMA) <= c.pA_lower == lower_confidence_bound(c.n, c.n, 0.001)
    g, x = _linear_at_distance(0.0)  # pA = 1/2: the mirror test abstains early
    c = certify_at(g, x, 0.5, alpha=0.001, max_n=100_000, batch_size=100)
    assert c.certified == (False,) and c.prediction == -1 and c.radius == 0.0 and c.n < 2000


def test_anytime_stops_early_and_abstains_when_hopeless():
    g, x = _linear_at_distance(0.0)
    c = certify_anytime(g, x, alpha=0.001, max_n=100_000, batch_size=500)
    assert c.prediction == -1 and c.radius == 0.0 and c.n < 100_000
    g, x = _linear_at_distance(0.5)  # pA = Phi(1) = 0.84
    c = certify_anytime(g, x, alpha=0.001, max_n=100_000, batch_size=500)
    assert c.prediction == 1 and 0.3 < c.radius < 0.5 and c.n < 100_000
    assert c.pA_lower >= lower_confidence_bound(c.nA, c.n, 0.001)  # the running max of L_n
    assert c.radius == pytest.approx(SIGMA * norm.ppf(c.pA_lower), abs=1e-12)


def test_selection_stops_once_its_argmax_is_settled_and_picks_cohens_class():
    """Curtailed selection stops once no remaining draw can change the argmax (ties to the lower class), and
    returns the argmax of all n0 draws of the selection stream: the draws it used (recorded, and redrawn from
    the stream in the same chunks) followed by the rest of the stream's n0. It uses 51 of 100 draws when they
    all agree."""
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    recording = Recording(f)
    seen = recording.seen
    g = Smoothed(recording, sigma=5.0, num_classes=3)  # votes spread
    x = torch.rand(1, 4, 4)
    used, n0 = [], 100
    for index in range(40):
        seen.clear()
        c = certify_at(g, x, 0.1, alpha=0.01, max_n=10, batch_size=100, index=index, n0=n0)
        sizes = np.cumsum([len(batch) for batch in seen])
        chunks = seen[:int(np.searchsorted(sizes, c.n0)) + 1]
        assert sum(len(batch) for batch in chunks) == c.n0  # the selection draws come first
        stream = g.generator(0, index, "selection")
        with torch.no_grad():
            for batch in chunks:
                assert torch.equal(batch, torch.randn(batch.shape, generator=stream).mul_(5.0).add_(x))
            rest = torch.randn((n0 - c.n0, *x.shape), generator=stream).mul_(5.0).add_(x)
            votes = torch.cat([f(batch).argmax(1) for batch in [*chunks, rest]])
        counts = np.bincount(votes[:c.n0].numpy(), minlength=3)
        assert c.cA == int(np.bincount(votes.numpy(), minlength=3).argmax()), index
        left = n0 - c.n0
        others = np.delete(np.arange(3), c.cA)
        assert all(counts[c.cA] - counts[j] > left or (counts[c.cA] - counts[j] == left and j > c.cA) for j in others)
        used.append(c.n0)
    assert min(used) < n0 <= max(used)  # some settle early, some need all n0
    g1, x1 = _linear_at_distance(3.0)  # every draw the same class
    assert certify_at(g1, x1, 0.1, alpha=0.01, max_n=10, batch_size=100).n0 == 51


@pytest.mark.parametrize("kwargs,match", [
    (dict(radius=-0.1), "radius"), (dict(radius=[]), "radius"), (dict(alpha=1.5), "alpha"),
    (dict(step=200), "step"), (dict(max_n=0), "max_n"), (dict(n0=0), "n0"),
])
def test_bad_arguments_raise(kwargs, match):
    g, x = _linear_at_distance(0.3)
    args = dict(radius=0.25, alpha=0.001, max_n=100, batch_size=100) | kwargs
    with pytest.raises(ValueError, match=match):
        certify_at(g, x, **args)


# -- the modes through dsmooth certify ---------------------------------------------------------------------
@pytest.mark.parametrize("mode,extra", [("sequential", ["--radii", "0.1,0.05"]), ("anytime", []),
                                        ("sequential", ["--radii", "0.1,0.05", "--mixture", "one-sided"])])
def test_sequential_modes_write_their_columns_and_analyze(cnn_dir, tmp_path, mode, extra):
    out = tmp_path / f"{mode}.tsv"
    args = digits_args(cnn_dir, out, n="2000", batch="100") + ["--mode", mode, *extra]
    assert main(args) == 0
    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert header[:10] == ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "nA", "n", "n0"]
    assert len(rows) == 20
    checks = set(check_schedule(2000, 10, 0.02, 100))  # the defaults: first check at 10, then 2% apart, <= batch
    for row in rows:
        assert int(row[8]) in checks  # stops early, at a check
        assert int(row[9]) == 0 if mode == "sequential" else 1 <= int(row[9]) <= 100  # every class tested; <= n0
        if mode == "sequential":
            certified = [int(v) for v in row[10].split(",")]
            assert len(certified) == 2 and float(row[3]) in {0.0, *(r for r, c in zip((0.05, 0.1), certified) if c)}
    assert main(args) == 0  # a finished run resumes to nothing
    assert main(["analyze", str(out), "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "samples/img" in table


def test_sequential_mode_needs_radii(cnn_dir, tmp_path, capsys):
    assert main(digits_args(cnn_dir, tmp_path / "s.tsv") + ["--mode", "sequential"]) == 2
    assert "sequential mode needs positive radii" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sequential_mixture_is_a_run_setting(cnn_dir, tmp_path, capsys):
    """The mixture is recorded; resuming with the other one is refused, naming it; a bad one is refused."""
    out = tmp_path / "s.tsv"
    base = digits_args(cnn_dir, out, n="500", batch="100") + ["--mode", "sequential", "--radii", "0.05", "--max", "3"]
    assert main(base + ["--mixture", "one-sided"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["options"]["mixture"] == "one-sided"
    assert main(base + ["--mixture", "two-sided"]) == 2
    assert "mixture" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mixture must be one of two-sided, one-sided, got 'both'"):
        RunSettings(classifier="small-cnn", dataset="digits", sigma=0.25, mode="sequential",
                    options={"radii": [0.1], "mixture": "both"}).validate()


def test_the_readme_command_with_its_defaults_spends_the_benchmarks_samples(tmp_path):
    """`dsmooth certify --mode sequential` without schedule options checks after 10 samples, then 2% of n
    apart (at most --batch), with the exact boundary, the futility rule at 0.3 and every class tested,
    whatever the batch: so it spends exactly what benchmarks/sequential_mnist.py's "one-sided, futility 0.3,
    exact, all classes" row spends on the same digits."""
    from certify.data import create_dataset
    from classifiers import create_classifier
    from denoisers import create_denoiser

    out = tmp_path / "seq.tsv"
    assert main(["certify", "--mode", "sequential", "--radii", "0.25,0.5,1.0", "--classifier", "small-cnn.mnist5k",
                 "--denoiser", "dncnn.mnist5k_s050_mse", "--dataset", "mnist5k:test", "--sigma", "0.5",
                 "--n", "3000", "--mixture", "one-sided", "--skip", "125", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0  # on the CPU, like the reference below, GPU or not
    options = json.loads(out.with_suffix(".json").read_text())["settings"]["options"]
    assert (options["step"], options["growth"], options["boundary"], options["futility"], options["selection"]) == \
        (10, 0.02, "exact", 0.3, "all")
    lines = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    used = [int(line[8]) + int(line[9]) for line in lines]  # test samples + selection samples
    data = create_dataset("mnist5k:test")
    g = Smoothed(create_classifier("small-cnn.mnist5k"), create_denoiser("dncnn.mnist5k_s050_mse"), sigma=0.5)
    indices = list(range(0, 1000, 125))
    bench = [c.n + c.n0 for c in certify_at_many(g, [data[i][0] for i in indices], [0.25, 0.5, 1.0], 0.001, 3000,
                                                 1000, indices=indices, step=10, growth=0.02, max_step=1000,
                                                 mixture="one-sided", futility=0.3, boundary="exact",
                                                 selection="all")]
    assert used == bench and min(used) < 400  # checks every 100 after 100 selection draws spent >= 100 + 400


def test_sequential_options_are_checked_recorded_and_part_of_a_runs_identity(tmp_path, capsys):
    """--futility, --growth, --step, --boundary and --selection: a bad value names itself and writes nothing; in
    another mode each is refused; each is recorded, and resuming with another value is refused, naming it.
    Off, on the command line or as YAML's bare `off` (false) in a compare config, is recorded as "off"."""
    args = ["certify", "--mode", "sequential", "--radii", "0.5", "--classifier", "small-cnn.mnist5k",
            "--dataset", "mnist5k:test", "--sigma", "0.5", "--n", "500", "--skip", "250", "--quiet"]
    assert main([*args, "--futility", "2", "--out", str(tmp_path / "a.tsv")]) == 2
    assert "futility must be a probability in (0, 1)" in capsys.readouterr().err
    assert main([*args, "--growth", "-0.1", "--out", str(tmp_path / "a.tsv")]) == 2
    assert "growth must be a number >= 0" in capsys.readouterr().err and not list(tmp_path.iterdir())
    for option, value, name in (("--futility", "0.1", "futility"), ("--boundary", "ville", "boundary"),
                                ("--selection", "all", "selection")):
        assert main(["certify", *args[5:], option, value, "--out", str(tmp_path / "b.tsv")]) == 2
        assert f"{name} is an option of the sequential mode, not of 'certify'" in capsys.readouterr().err
    for option, value, says in (
            ("--futility", "maybe", "expected a probability in (0, 1) or 'off', got 'maybe'"),
            ("--boundary", "exakt", "--boundary: expected one of 'exact', 'ville', got 'exakt'; did you mean 'exact'?"),
            ("--selection", "first", "--selection: expected one of 'argmax', 'all', got 'first'")):
        with pytest.raises(SystemExit) as stop:  # argparse's own usage error
            main([*args, option, value, "--out", str(tmp_path / "d.tsv")])
        assert stop.value.code == 2 and says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

    # the defaults, futility at 0.1: every class tested, no selection draws
    assert main([*args, "--futility", "0.1", "--out", str(tmp_path / "c.tsv")]) == 0
    options = json.loads((tmp_path / "c.json").read_text())["settings"]["options"]
    assert options["futility"] == 0.1 and options["selection"] == "all"
    used = [line.split("\t") for line in (tmp_path / "c.tsv").read_text().splitlines()[1:]]
    assert used and all(int(line[9]) == 0 for line in used)  # no selection draws
    assert main([*args, "--futility", "0.1", "--selection", "argmax", "--out", str(tmp_path / "c.tsv")]) == 2
    assert "selection" in capsys.readouterr().err  # resume: another selection

    # futility off, Ville's boundary, growth 0: a check every --step samples
    schedule = ["--boundary", "ville", "--growth", "0", "--step", "50"]
    assert main([*args, "--futility", "off", *schedule, "--out", str(tmp_path / "e.tsv")]) == 0
    options = json.loads((tmp_path / "e.json").read_text())["settings"]["options"]
    assert (options["futility"], options["boundary"], options["growth"], options["step"]) == ("off", "ville", 0, 50)
    used = [int(line.split("\t")[8]) for line in (tmp_path / "e.tsv").read_text().splitlines()[1:]]
    assert all(n % 50 == 0 for n in used)
    assert main([*args, *schedule, "--out", str(tmp_path / "e.tsv")]) == 2  # the default futility (0.3) now
    assert "futility" in capsys.readouterr().err
    assert main([*args, "--futility", "off", "--growth", "0", "--step", "50", "--out", str(tmp_path / "e.tsv")]) == 2
    assert "boundary" in capsys.readouterr().err  # the exact boundary now

    settings = RunSettings(classifier="small-cnn", dataset="digits", sigma=0.5, n=100, mode="sequential",
                           options={"radii": [0.5], "futility": False}).validate()
    assert settings.options.futility == "off"
    with pytest.raises(ValueError, match="boundary must be"):
        RunSettings(classifier="small-cnn", dataset="digits", sigma=0.5, n=100, mode="sequential",
                    options={"radii": [0.5], "boundary": "both"}).validate()
