"""Issue 13: one clear line for bad checkpoints, configs, options and images; listing; plugins; the plot."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import torch

from certify.analysis import RunResult, draw_curves
from certify.cli import main
from certify.registry import Registry
from classifiers import create_classifier
from classifiers.state_files import read_state_file
from denoisers import create_denoiser


def test_a_keyword_the_plugin_does_not_take_is_one_line():
    with pytest.raises(ValueError, match=r"dataset 'digits:test' does not take that option .*colour"):
        from certify.data import create_dataset

        create_dataset("digits:test", colour=True)


def test_a_shipped_model_refuses_options_it_would_ignore():
    with pytest.raises(ValueError, match=r"takes no options, got \['pretrained'\]"):
        create_classifier("small-cnn.mnist5k", pretrained=False)


def test_wrong_channel_count_names_the_classifier():
    clf = create_classifier("small-cnn", in_channels=1, image_size=8, width=4)
    with pytest.raises(ValueError, match=r"small-cnn takes 1-channel images, got 3 channel"):
        clf(torch.rand(2, 3, 8, 8))


def test_pickles_and_non_tensor_checkpoints_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name, payload in (("evil.pth", Evil()), ("list.pth", [1, 2, 3])):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        create_denoiser("dncnn", in_channels=1, depth=3, features=4).save_pretrained(d)
        (d / "model.safetensors").unlink()
        with open(d / name, "wb") as fh:
            pickle.dump(payload, fh)
        with pytest.raises(ValueError, match="weights-only torch file|not a state dict of tensors"):
            create_denoiser(f"dncnn:{d}")


def test_truncated_safetensors_weights_file_is_one_line(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1000)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_state_file(tmp_path / "w.safetensors")


def test_torn_diffusers_unet_is_one_line(tmp_path):
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8),
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                       layers_per_block=1, norm_num_groups=4)
    unet.save_pretrained(tmp_path / "u")
    weights = tmp_path / "u" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot be loaded"):
        create_denoiser(f"ddpm:{tmp_path / 'u'}")


@pytest.mark.parametrize("config,message", [([1, 2], "must hold a JSON object"),
                                            ({"architecture": "dncnn", "in_channels": 1, "depth": 17,
                                              "features": 10**7}, "GB of weights")])
def test_absurd_or_malformed_configs_are_refused_before_allocating(tmp_path, config, message):
    create_denoiser("dncnn", in_channels=1, depth=3, features=4).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        create_denoiser(f"dncnn:{tmp_path}")


def test_listing_with_a_pattern_searches_timm_and_torchvision(capsys):
    assert main(["list", "classifiers", "*resnet50"]) == 0
    out = capsys.readouterr().out
    assert "timm:resnet50 " in out and "torchvision:resnet50 " in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("dsmooth 0.")


def test_a_plugin_named_like_a_built_in_is_reported(tmp_path, monkeypatch, caplog):
    dist = tmp_path / "clashing-2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clashing\nVersion: 2.0\n")
    (dist / "entry_points.txt").write_text("[test.clash]\nsquare = json:dumps\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", entry_point_group="test.clash")
    reg.register("square")(lambda identifier=None: "built-in")
    with caplog.at_level(logging.WARNING):
        assert reg.create("square") == "built-in"
    assert "widget plugin 'square' from clashing collides with the built-in" in caplog.text


def test_the_plot_keeps_every_pipeline_visible():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def run(name, sigma):
        r = np.array([0.3, 0.6])
        return RunResult(name, r, np.ones(2, int), np.zeros(2, int), np.zeros(2), np.zeros(2),
                         {"settings": {"sigma": sigma}})

    fig, ax = plt.subplots()
    draw_curves(ax, [run("a", 0.25), run("b", 0.25), run("c", 0.5)], np.linspace(0, 1, 50))
    a, b, c = ax.get_lines()
    assert not np.array_equal(a.get_ydata(), b.get_ydata())  # identical results, both visible
    assert a.get_linestyle() == b.get_linestyle() != c.get_linestyle()  # a style per sigma
    assert a.get_marker() != b.get_marker()
    assert max(max(line.get_ydata()) for line in (a, b, c)) < 102
    plt.close(fig)
