"""The benchmark scripts run end to end on tiny settings and write the JSON the README quotes.

No speed is asserted here (speed targets live in the JSON the scripts write); these tests only keep
the scripts from rotting.
"""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    """A benchmark script as a module (its folder is on the path, tests/conftest.py: it imports ``benchlib``)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_certify_throughput_with_denoiser(tmp_path):
    out = tmp_path / "t.json"
    result = _load("certify_throughput").main(
        ["--model", "resnet18", "--size", "16", "--batch", "10", "--n", "20", "--repeats", "1",
         "--denoiser", "dncnn", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["denoiser"] == "dncnn" and result["samples"] == 20
    (run,) = result["runs"]
    assert set(run["samples_per_s"]) == {"forward", "engine", "reference"}
    assert all(v > 0 for v in run["samples_per_s"].values())
    assert run["engine_over_forward"] == pytest.approx(run["samples_per_s"]["engine"] / run["samples_per_s"]["forward"])


def test_sequential_mnist_tiny(tmp_path):
    out = tmp_path / "s.json"
    result = _load("sequential_mnist").main(
        ["--sigmas", "0.5", "--images", "3", "--cohen-images", "2", "--cohen-n", "300", "--max-n", "500",
         "--pack-images", "2", "--batch", "200", "--pack-step", "100", "--futility", "off", "0.3", "--boundary",
         "ville", "--selection", "argmax", "--quiet", "--out", str(out)])
    assert json.loads(out.read_text())["sigmas"][0]["sigma"] == 0.5
    (s,) = result["sigmas"]
    labels = {"two-sided, ville, argmax", "one-sided, ville, argmax", "two-sided, futility 0.3, ville, argmax",
              "one-sided, futility 0.3, ville, argmax"}
    assert set(s["sequential"]) == set(s["cohen"]["sequential_on_same_images"]) == labels
    assert result["futility"] == [None, 0.3] and (result["step"], result["growth"]) == (10, 0.02)
    cohen = s["cohen"]
    assert cohen["images"] == 2 and cohen["samples_per_image"] == 400
    assert all(0.0 <= v <= 1.0 for v in cohen["certified_accuracy"].values())
    for mixture, seq in s["sequential"].items():
        assert seq["images"] == 3 and set(seq["certified_accuracy"]) == {"0.25", "0.5", "1"}
        assert 51 <= seq["mean_samples"] <= 100 + 500 and seq["max_samples"] <= 600
        same = cohen["sequential_on_same_images"][mixture]
        assert same["sample_ratio"] == pytest.approx(400 / same["mean_samples"])
    assert s["packing"]["mixture"] == "two-sided, ville, argmax" and s["packing"]["images"] == 2

    for mixture in ("two-sided", "one-sided"):  # the rule only ever stops earlier, never certifies more
        off, on = s["sequential"][f"{mixture}, ville, argmax"], s["sequential"][f"{mixture}, futility 0.3, ville, argmax"]
        assert on["mean_samples"] <= off["mean_samples"]
        assert all(on["certified_accuracy"][r] <= off["certified_accuracy"][r] for r in off["certified_accuracy"])
    table = _load("sequential_mnist").markdown(result).splitlines()
    assert len(table) == 2 + 9 and table[2].startswith("| 0.5 | Cohen, n = 300 | 2 | 400 |")
    same = cohen["sequential_on_same_images"]["one-sided, ville, argmax"]
    assert f"| {same['sample_ratio']:.1f}x |" in table[4] and "one-sided, ville, argmax, same digits" in table[4]

    again = _load("sequential_mnist").main(  # Cohen's figures reused from the first run, the exact boundary
        ["--sigmas", "0.5", "--images", "3", "--cohen-images", "2", "--cohen-n", "300", "--max-n", "500",
         "--pack-images", "1", "--batch", "200", "--mixtures", "one-sided", "--boundary", "exact", "--quiet",
         "--cohen-from", str(out), "--out", str(tmp_path / "again.json")])
    (a,) = again["sigmas"]
    assert {k: v for k, v in a["cohen"].items() if k not in ("from", "sequential_on_same_images")} == \
        {k: v for k, v in cohen.items() if k != "sequential_on_same_images"}
    assert set(a["sequential"]) == {"one-sided, futility 0.3, exact, argmax", "one-sided, futility 0.3, exact, all classes"}
    every, cohens = (a["sequential"][f"one-sided, futility 0.3, exact, {c}"] for c in ("all classes", "argmax"))
    assert every["mean_samples"] < cohens["mean_samples"]  # no selection draws
    with pytest.raises(SystemExit, match="no Cohen run"):
        _load("sequential_mnist").main(["--sigmas", "0.25", "--images", "3", "--cohen-images", "2", "--cohen-n", "300",
                                         "--max-n", "500", "--quiet", "--cohen-from", str(out),
                                         "--out", str(tmp_path / "x.json")])


def test_dds_cost_smoke(tmp_path):
    pytest.importorskip("guided_diffusion")
    out = tmp_path / "d.json"
    result = _load("dds_cost").main(["--tiny", "--samples", "8", "--batch", "4", "--configs", "fp32", "bf16",
                                     "--sequential-configs", "fp32", "--photos", "2", "--sequential-n", "100", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [r["config"] for r in result["runs"]] == ["fp32", "bf16", "fp32"]
    recorded = result["runs"][-1]  # the end-to-end sequential row: 2 photos whose votes follow recorded rates
    assert recorded["mode"] == "sequential (recorded rates)" and recorded["photos"] == 2
    assert 0 < recorded["batch_fill"] <= 1 and recorded["samples_used_per_image"] <= 100
    for run in result["runs"][:2]:
        assert run["batch"] == 4 and run["samples"] == 8 and run["samples_per_s"] > 0
        assert run["seconds_per_image_cohen"] == pytest.approx(10_100 / run["samples_per_s"])
        for sigma, count in result["sequential_sample_counts"]["mean_samples"].items():
            assert run["seconds_per_image_sequential"][sigma] == pytest.approx(count / run["samples_per_s"])
    assert set(result["sequential_sample_counts"]["mean_samples"]) == {"0.25", "0.5"}  # the shipped MNIST JSON


def test_dds_cost_keeps_what_it_measured_when_cut_short(tmp_path, monkeypatch):
    """gpu_check.sh runs each step under a time limit: the JSON holds every measurement finished before a cut."""
    pytest.importorskip("guided_diffusion")
    dds, out = _load("dds_cost"), tmp_path / "d.json"

    def cut(*args, **kwargs):
        raise KeyboardInterrupt  # what a limit's signal ends

    monkeypatch.setattr(dds, "measure_sequential", cut)
    with pytest.raises(KeyboardInterrupt):
        dds.main(["--tiny", "--samples", "4", "--batch", "4", "--configs", "fp32", "--sequential-configs", "fp32",
                  "--photos", "1", "--out", str(out)])
    assert [r["config"] for r in json.loads(out.read_text())["runs"]] == ["fp32"]


def test_two_class_gain_compares_the_same_samples(tmp_path):
    from certify.settings import RunSettings
    from certify.pipeline import certify_dataset

    common = dict(classifier="small-cnn.mnist5k", dataset="mnist5k:test", sigma=0.5, n0=20, n=200, batch=220,
                  skip=200, max=1000)
    certify_dataset(RunSettings(**common), tmp_path / "one" / "p.tsv", device="cpu", quiet=True)
    certify_dataset(RunSettings(**common, options={"bound": "two-class"}), tmp_path / "two" / "p.tsv",
                    device="cpu", quiet=True)
    out = tmp_path / "g.json"
    result = _load("two_class_gain").main(["--one", str(tmp_path / "one"), "--two", str(tmp_path / "two"),
                                          "--radii", "0,0.25", "--out", str(out)])
    p = result["pipelines"]["p"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert p["images"] == 5 and p["raised"] + p["lowered"] <= 5
    with pytest.raises(ValueError, match="expected .* one-class and .* two-class"):
        _load("two_class_gain").main(["--one", str(tmp_path / "two"), "--two", str(tmp_path / "two"),
                                      "--out", str(out)])


def test_futility_cost_tiny(tmp_path):
    """Exact operating characteristics: the rule never certifies more and saves samples at p0."""
    out = tmp_path / "f.json"
    result = _load("futility_cost").main(["--r-over-sigma", "1", "--gammas", "0.3", "--max-n", "3000",
                                          "--alpha", "0.01", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    (t,) = result["thresholds"]
    assert t["p0"] < t["q"] < 1 and list(t["futility"]) == ["off", "0.3"]
    off, on = t["futility"]["off"], t["futility"]["0.3"]
    for name in off:
        assert on[name]["p_certify"] <= off[name]["p_certify"] + 1e-12
        assert abs(on[name]["p_certify"] + on[name]["p_abstain"] - 1) < 1e-9
    assert off["p0"]["p_certify"] <= 0.01 and on["p0"]["mean_samples"] < 0.8 * off["p0"]["mean_samples"]
    assert off["q + (q - p0)"]["p_certify"] - on["q + (q - p0)"]["p_certify"] <= 0.3
    table = _load("futility_cost").markdown(result, "0.3").splitlines()
    assert len(table) == 2 + 5 and table[0].startswith("| rate | P(certify), off | P(certify), 0.3 |")


def test_boundary_cost_tiny(tmp_path):
    """Exact figures: every version keeps P(certify at p0) <= alpha; the exact boundary spends more of it and
    decides sooner just above the needed rate; the growing schedule stops all-hit images sooner."""
    out = tmp_path / "b.json"
    result = _load("boundary_cost").main(["--r-over-sigma", "1", "--max-n", "3000", "--alpha", "0.01",
                                          "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    (t,) = result["thresholds"]
    v = t["versions"]
    assert list(v) == ["ville, every 100", "ville, growing", "exact, growing"]
    for version in v.values():
        assert version["p0"]["p_certify"] <= 0.01
    assert v["exact, growing"]["p0"]["p_certify"] > v["ville, growing"]["p0"]["p_certify"]
    assert v["exact, growing"]["q + (q - p0)"]["mean_samples"] < v["ville, growing"]["q + (q - p0)"]["mean_samples"]
    assert v["ville, growing"]["1"]["mean_samples"] < v["ville, every 100"]["1"]["mean_samples"]
    table = _load("boundary_cost").markdown(result).splitlines()
    assert len(table) == 2 + 5 and table[0].startswith("| r / sigma | rate | ville, every 100 |")


def test_timestep_rule_smoke(tmp_path):
    result = _load("timestep_rule").main(["--sigmas", "0.5", "--draws", "1", "--out", str(tmp_path / "t.json")])
    row = result["rows"][0]
    assert row["images"] == 30 and row["t_first"] == 259 and 258 < row["t_exact"] < 259
    assert row["implied_sigma_exact"] == pytest.approx(0.5) and row["implied_sigma_first"] > 0.5
    assert row["psnr_first"] > row["psnr_noisy"] + 6 and row["psnr_exact"] > row["psnr_noisy"] + 6


def test_sequential_packing_tiny(tmp_path):
    """Three ways give the same certificates; look-ahead fills the passes; Cohen mode is the samples/s reference."""
    out = tmp_path / "p.json"
    result = _load("sequential_packing").main(
        ["--images", "4", "--sigmas", "0.25", "--n", "2000", "--batch", "200", "--cohen-images", "1",
         "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {row["way"]: row for row in result["rows"]}
    assert list(rows) == ["one image per call", "packed", "packed + look-ahead", "Cohen mode"]
    assert all(rows[w]["identical"] for w in list(rows)[:3]) and rows["Cohen mode"]["images"] == 1
    one, ahead = rows["one image per call"], rows["packed + look-ahead"]
    assert one["samples_used"] == ahead["samples_used"] <= ahead["samples_drawn"]
    assert ahead["forward_passes"] < one["forward_passes"] and ahead["batch_fill"] > one["batch_fill"]
    cohen = rows["Cohen mode"]["samples_per_s"]
    assert ahead["samples_per_s_vs_cohen"] == pytest.approx(ahead["samples_per_s"] / cohen, rel=1e-2)
