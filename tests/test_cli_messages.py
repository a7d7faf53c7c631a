"""Issue 25, item 15: one line per mistake, quiet when asked, close matches, clean help and progress output."""

from __future__ import annotations

import argparse
import logging
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from certify.cli import build_parser, main


@pytest.mark.parametrize("argv, says", [
    (["certify", "--classifier", "small-cnn", "--dataset", "digits", "--sigma", "abc", "--out", "r.tsv"],
     ["--sigma: expected a number, got 'abc'", "dsmooth certify --help"]),
    (["certify", "--classifier", "small-cnn", "--dataset", "digits", "--sigma", "1", "--out", "r.tsv", "--n", "1e3"],
     ["--n: expected a whole number, got '1e3'"]),
    (["certify", "--classifier", "small-cnn", "--dataset", "digits", "--sigma", "1", "--out", "r.tsv",
      "--mode", "sequentail"], ["--mode", "'sequentail'", "did you mean 'sequential'"]),
    (["certfy"], ["did you mean 'certify'", "dsmooth --help"]),
    (["certify", "--classifier", "small-cnn"], ["required: --dataset, --sigma, --out"]),
])
def test_a_command_line_mistake_is_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err  # no usage block before it
    assert err.startswith("dsmooth") and all(s in err for s in says), err


def subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_no_raw_markup_in_any_help(capsys):
    parser = build_parser()
    pages = {"dsmooth": parser.format_help(), **{name: p.format_help() for name, p in subparsers(parser)}}
    assert {"list", "certify", "predict", "attack", "check", "analyze", "compare", "train-denoiser"} <= set(pages)
    for name, text in pages.items():
        for markup in ("`", "%%", ":func:", ":class:", ":meth:", "**", ">>>", "<br>", "\\n"):
            assert markup not in text, f"dsmooth {name} --help shows {markup!r}"


def test_quiet_silences_the_datasets_library(tmp_path, capsys, monkeypatch):
    import datasets
    import huggingface_hub

    variables = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "DATASETS_VERBOSITY",
                 "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_VERBOSITY")
    for var in variables:
        monkeypatch.setenv(var, "")  # recorded, so that what --quiet sets is undone too
        monkeypatch.delenv(var)
    for name in ("datasets", "transformers", "diffusers", "huggingface_hub", "timm"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    rng = np.random.default_rng(0)
    for label in (0, 1):  # a new folder: the datasets library builds (and would draw) its split
        (tmp_path / "d" / str(label)).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "d" / str(label) / "a.png")
    try:
        code = main(["certify", "--classifier", "small-cnn", "--classifier-arg", "image_size=8", "--dataset",
                     f"imagefolder:{tmp_path / 'd'}", "--sigma", "0.5", "--n0", "5", "--n", "20", "--batch", "20",
                     "--out", str(tmp_path / "r.tsv"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 0 and err == ""  # was: "Generating train split: ... examples/s"
        assert all(logging.getLogger(n).level == logging.ERROR for n in ("datasets", "transformers", "diffusers", "timm"))
    finally:  # the bars back on for the other tests
        for var in variables:
            monkeypatch.delenv(var, raising=False)
        datasets.enable_progress_bars()
        huggingface_hub.utils.enable_progress_bars()
        for name in ("transformers", "diffusers"):
            if name in sys.modules:
                sys.modules[name].utils.logging.enable_progress_bar()


def test_close_matches_for_model_and_class_names(tmp_path):
    from certify.data import create_dataset, map_folder_labels
    from classifiers import create_classifier

    with pytest.raises(ValueError, match=r"unknown timm model 'resnt50'; did you mean 'timm:resnet50'"):
        create_classifier("timm:resnt50", pretrained=False)
    with pytest.raises(ValueError, match=r"did you mean 'torchvision:resnet50'"):
        create_classifier("torchvision:resnet05", weights=None)
    for name in ("goldfsh", "tench"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "a.png")
    ds = create_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(ValueError, match=r"\(folder 'goldfsh'; did you mean 'goldfish'\?\)"):
        map_folder_labels(ds, ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"])


def test_list_classifiers_in_python_finds_what_the_cli_lists(capsys):
    from classifiers import list_classifiers

    assert main(["list", "classifiers", "*resnet5*"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed and list_classifiers("*resnet5*") == listed
    assert "timm:resnet50" in listed and "torchvision:resnet50" in listed


def test_only_the_main_process_draws_a_progress_bar(tmp_path, capsys, monkeypatch):
    from certify import runs
    from certify.settings import RunSettings
    from certify.runs import run_certification
    from certify.smoothing import Smoothed

    monkeypatch.setattr(runs, "_from_rank0", lambda value, world_size: value)  # no process group here
    f = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    data = [(torch.full((1, 2, 2), 0.5), 0)] * 4
    settings = RunSettings(classifier="toy", dataset="toy", sigma=0.25, n0=10, n=50, batch=25)
    run_certification(Smoothed(f, sigma=0.25, num_classes=2), data, settings, tmp_path / "r.tsv", rank=1, world_size=2)
    assert capsys.readouterr().err == ""  # was a bar at position 1, cleared: blank lines under accelerate launch
    assert (tmp_path / "r.tsv.part-001").read_text().count("\n") == 3  # its two images and the header
    run_certification(Smoothed(f, sigma=0.25, num_classes=2), data, settings, tmp_path / "one.tsv")
    assert re.search(r"certify sigma=0\.25: 100%", capsys.readouterr().err)  # one process: its bar as before
