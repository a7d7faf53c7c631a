"""certify/cli.py, `dsmooth`: one line per command-line mistake (no usage block) with close matches, help pages
without raw markup, --quiet silencing the libraries, listing (the CLI and Python agree), --version, analyze's
--names, and a device that is not there."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from certify.cli import build_parser, main
from certify.runs import run_certification
from classifiers import list_classifiers
from fixtures import toy_run


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


def test_list_classifiers_in_python_finds_what_the_cli_lists(capsys):
    assert main(["list", "classifiers", "*resnet5*"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed and list_classifiers("*resnet5*") == listed
    assert "timm:resnet50" in listed and "torchvision:resnet50" in listed



def test_listing_with_a_pattern_searches_timm_and_torchvision(capsys):
    assert main(["list", "classifiers", "*resnet50"]) == 0
    out = capsys.readouterr().out
    assert "timm:resnet50 " in out and "torchvision:resnet50 " in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("dsmooth 0.")



def test_names_must_match_the_files(tmp_path, capsys):
    g, data, s = toy_run(2)
    a = run_certification(g, data, s, tmp_path / "a.tsv", quiet=True)
    b = run_certification(g, data, s, tmp_path / "b.tsv", quiet=True)
    assert main(["analyze", str(a), str(b), "--names", "x", "--out", str(tmp_path / "rep")]) == 2
    assert "--names gives 1 name(s) for 2 file(s)" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    code = main(["certify", "--classifier", "small-cnn", "--dataset", "digits:test", "--sigma", "0.5", "--n", "10",
                 "--device", "cuda", "--out", str(tmp_path / "r.tsv")])
    assert code == 2 and "torch sees no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("error, reason", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 313600000000 bytes. Error code 12 (Cannot allocate memory)"),
     "the CPU allocator could not find 313.6 GB"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 8 GiB"),
     "the device could not find 2.00 GiB"),
])
def test_memory_running_out_mid_run_is_one_line_and_the_run_resumes(error, reason, cnn_dir, tmp_path, capsys,
                                                                    monkeypatch):
    from certify.smoothing import Smoothed

    # saved weights: a fresh small-cnn is another random network each time, whose resume is refused
    argv = ["certify", "--classifier", f"small-cnn:{cnn_dir}", "--dataset", "digits:test", "--sigma", "0.5", "--n0", "10",
            "--n", "40", "--batch", "20", "--max", "4", "--out", str(tmp_path / "r.tsv"), "--quiet"]
    sample_batch, calls = Smoothed.sample_batch, []

    def runs_out_on_the_fifth_pass(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise error
        return sample_batch(self, *args, **kwargs)

    monkeypatch.setattr(Smoothed, "sample_batch", runs_out_on_the_fifth_pass)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"out of memory ({reason})" in err and "smaller --batch" in err, err
    monkeypatch.setattr(Smoothed, "sample_batch", sample_batch)
    assert main(argv) == 0  # the same command resumes and completes
    assert len((tmp_path / "r.tsv").read_text().splitlines()) == 1 + 4


def _certified(tmp_path):
    out = tmp_path / "r.tsv"
    assert main(["certify", "--classifier", "small-cnn", "--dataset", "digits:test", "--sigma", "0.5", "--n0", "5",
                 "--n", "20", "--max", "2", "--out", str(out), "--quiet"]) == 0
    return out


def test_a_file_where_a_folder_belongs_or_a_read_only_disk_is_one_line(tmp_path, capsys, monkeypatch):
    out = _certified(tmp_path)
    capsys.readouterr()
    assert main(["analyze", str(out), "--out", str(out)]) == 2  # the report folder named as the result file
    assert capsys.readouterr().err == f"dsmooth analyze: error: {out} is a file where a folder is needed (File exists)\n"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "rep"))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["analyze", str(out), "--out", str(tmp_path / "rep")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"dsmooth analyze: error: cannot use {tmp_path / 'rep'}: "
                                                    f"Read-only file system"]
    with pytest.raises(OSError):  # --verbose keeps the traceback
        main(["-v", "analyze", str(out), "--out", str(tmp_path / "rep")])


def test_ctrl_c_is_one_line_saying_the_run_resumes(tmp_path, capsys, monkeypatch):
    from certify.smoothing import Smoothed

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Smoothed, "sample_batch", interrupted)
    assert main(["certify", "--classifier", "small-cnn", "--dataset", "digits:test", "--sigma", "0.5", "--n", "10",
                 "--out", str(tmp_path / "r.tsv"), "--quiet"]) == 130
    assert capsys.readouterr().err == ("dsmooth certify: interrupted; what was finished is kept (the same command "
                                       "goes on from it)\n")


def test_any_other_runtime_error_keeps_its_traceback(tmp_path, monkeypatch):
    from certify.smoothing import Smoothed

    def broken(self, *args, **kwargs):
        raise RuntimeError("a bug, not a full memory")

    monkeypatch.setattr(Smoothed, "sample_batch", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["certify", "--classifier", "small-cnn", "--dataset", "digits:test", "--sigma", "0.5", "--n", "10",
              "--out", str(tmp_path / "r.tsv"), "--quiet"])
