"""Issue 13: one clear line for bad checkpoints, configs, options and images; listing; plugins; the plot."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re

import numpy as np
import pytest
import torch

from certify.analysis import RunResult
from certify.plots import draw_curves
from certify.cli import main
from certify.registry import Registry
from classifiers import create_classifier
from classifiers.state_files import read_state_file
from denoisers import create_denoiser


def test_a_keyword_the_plugin_does_not_take_is_one_line():
    from certify.data import create_dataset

    with pytest.raises(ValueError, match=r"^unknown option 'colour' for dataset 'digits'; it takes no options$"):
        create_dataset("digits:test", colour=True)
    with pytest.raises(ValueError, match=r"^unknown option 'colour' for dataset 'imagefolder'; it takes size, label_map$"):
        create_dataset("imagefolder:.", colour=True)


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
                                              "features": 10**7}, "more than 32 GiB of weights"),
                                            ({"architecture": "dncnn", "in_channels": 1, "depth": 10**9,
                                              "features": 4}, "more than 20,000 weight tensors"),
                                            ({"architecture": ["dncnn"]}, "holds architecture \\['dncnn'\\]")])
def test_absurd_or_malformed_configs_are_refused_before_allocating(tmp_path, config, message):
    create_denoiser("dncnn", in_channels=1, depth=3, features=4).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        create_denoiser(f"dncnn:{tmp_path}")


def test_a_weights_file_is_read_before_its_network_is_built(tmp_path, monkeypatch):
    """Issue 25 item 8, for every loader of a config + weights file (one mechanism, build_loaded): a damaged
    file is refused before anything is built; weights of another network are compared on the meta device,
    so a config describing 10 GB (DnCNN, 4096 features) is never built for real."""
    import torchvision

    from denoisers.dncnn import DnCNN

    devices, original = [], DnCNN.__init__

    def spy(self, *args, **kwargs):
        devices.append(torch.empty(0).device.type)
        assert devices[-1] == "meta" or kwargs.get("features", 64) <= 64, "10 GB built for real"
        original(self, *args, **kwargs)

    monkeypatch.setattr(DnCNN, "__init__", spy)
    create_denoiser("dncnn", in_channels=1, depth=3, features=4).save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "depth": 17, "features": 4096}))
    devices.clear()
    with pytest.raises(ValueError, match="weights in .* do not match their config: .*shape of"):
        create_denoiser(f"dncnn:{tmp_path / 'ckpt'}")
    assert devices == ["meta"]
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    devices.clear()
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        create_denoiser(f"dncnn:{tmp_path / 'ckpt'}")
    assert devices == []
    built = []
    monkeypatch.setattr(torchvision.models, "get_model", lambda *a, **k: built.append(a))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        create_classifier("torchvision:resnet18", weights=None, weights_file=str(weights))
    assert built == []


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
    assert np.array_equal(a.get_ydata(), b.get_ydata())  # identical results drawn where they are (issue 25) ...
    assert a.get_marker() != b.get_marker() and a.get_markevery() != b.get_markevery()  # ... both visible
    assert a.get_linestyle() == b.get_linestyle() != c.get_linestyle()  # a style per sigma
    assert max(max(line.get_ydata()) for line in (a, b, c)) == 100
    plt.close(fig)


# -- options: the factory's signature decides; TypeErrors of its own are not hidden ----------------------------
def _inner(size):
    return size


def test_a_type_error_inside_a_factory_is_not_taken_for_a_bad_option():
    reg = Registry("widget", entry_point_group=None)
    reg.register("buggy")(lambda identifier=None, size=1: _inner(colour=size))  # a bug, not the user's option
    reg.register("forwards")(lambda identifier=None, **options: _inner(**options))
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        reg.create("buggy", size=2)
    with pytest.raises(ValueError, match=r"^unknown option 'colour' for widget 'forwards' \(.*_inner\(\) got an"):
        reg.create("forwards", colour=2)  # handed on, refused by its receiver: the user's option after all
    assert reg.create("forwards", size=3) == 3


def test_fresh_models_refuse_options_they_do_not_take_and_absurd_sizes():
    with pytest.raises(ValueError, match=r"^unknown option 'widht' for classifier 'small-cnn'; it takes in_channels, "):
        create_classifier("small-cnn", widht=8)  # was stored in the config and ignored
    with pytest.raises(ValueError, match=r"efficientnet-lite0 is the shipped ImageNet weights, so it does not take "
                                         r"\['pretrained'\]"):
        create_classifier("efficientnet-lite0", pretrained=False)  # was ignored: the shipped weights loaded anyway
    with pytest.raises(ValueError, match=r"dncnn with options \{'features': 10000000\} describes a network of more"):
        create_denoiser("dncnn", features=10**7)  # was a RuntimeError from the allocator (36 TB)
    with pytest.raises(ValueError, match="small-cnn needs integer sizes >= 1"):
        create_classifier("small-cnn", width=-1)  # was a RuntimeError (negative dimension)


def test_seeded_fresh_models_are_unchanged_by_the_size_probe():
    from denoisers.dncnn import DnCNN

    torch.manual_seed(0)
    direct = DnCNN(in_channels=1, depth=4, features=8).state_dict()
    torch.manual_seed(0)
    made = create_denoiser("dncnn", in_channels=1, depth=4, features=8).state_dict()
    assert all(torch.equal(direct[k], made[k]) for k in direct)


def test_a_bad_small_cnn_config_is_one_line(tmp_path):
    from classifiers.small_cnn import SmallCNN

    SmallCNN(width=4, image_size=8).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_classes": -1}))
    with pytest.raises(ValueError, match=r"does not describe a small-cnn: .*got \{'num_classes': -1\}"):
        create_classifier(f"small-cnn:{tmp_path}")


# -- checkpoints ------------------------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


class _EvilSystem:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


#: torch's own advice on a pickle (to load it with weights_only off, or allowlist its globals): never ours.
TORCH_ADVICE = ("Weights only load failed", "Re-running", "In PyTorch 2.6", "arbitrary code", "safe_globals",
                "allowlist", "allowed global", "two options", "\x1b", "\n")


@pytest.mark.parametrize("payload,named", [
    (lambda f: torch.save(torch.nn.Linear(2, 2), f), "torch.nn.modules.linear.Linear"),  # a pickled module
    (lambda f: torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, f),
     "argparse.Namespace"),  # a dict holding a non-tensor object beside the tensors
    (lambda f: f.write_bytes(pickle.dumps(_Evil(), protocol=2)), "print"),
    (lambda f: torch.save(_EvilSystem(), f), "posix.system" if os.name == "posix" else "nt.system"),
], ids=["module", "dict-with-object", "print", "os.system"])
def test_a_pickle_is_answered_in_our_words_not_torchs(tmp_path, payload, named):
    """Issue 25 item 9: the file is a pickle (of what), we never unpickle, and how to convert it; none of
    torch's advice to load it with weights_only=False (it leaked whole for a blocked global like os.system)."""
    payload(tmp_path / "evil.pth")
    create_denoiser("dncnn", in_channels=1, depth=3, features=4).save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    (tmp_path / "ckpt" / "evil.pth").write_bytes((tmp_path / "evil.pth").read_bytes())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "training_state.pt").write_bytes((tmp_path / "evil.pth").read_bytes())
    from certify.training import load_training_state

    for load in (lambda: read_state_file(tmp_path / "evil.pth"), lambda: create_denoiser(f"dncnn:{tmp_path / 'ckpt'}"),
                 lambda: create_classifier("torchvision:resnet18", weights=None, weights_file=str(tmp_path / "evil.pth")),
                 lambda: load_training_state(tmp_path / "run")):
        with pytest.raises(ValueError) as exc:
            load()
        message = str(exc.value)
        if named.endswith(".system"):  # a blocked module: no conversion is offered for a file that runs commands
            assert f"is a pickle that would call {named} when loaded: it is refused" in message, message
            assert "weights_only=False" not in message
        else:
            assert f"is a pickle (of {named}), not a state dict of tensors; weights are loaded here without " \
                   f"unpickling. Where you trust the file, convert it once: torch.save(torch.load(" in message, message
            assert "or save the state dict as safetensors" in message
        assert not [phrase for phrase in TORCH_ADVICE if phrase in message], message


def test_a_torn_transformers_classifier_is_one_line(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=8, num_labels=3)
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"could not load a transformers image classifier .*\(SafetensorError: "):
        create_classifier(f"hf:{tmp_path}")  # was a SafetensorError traceback


def test_a_pickled_transformers_checkpoint_is_one_line_in_our_words(tmp_path):
    """Issue 25 item 9 through a library's loader: transformers passes torch's refusal on, whose first line
    began its advice ('This file can still be loaded, to do so you have two options, ...')."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=8, num_labels=3)
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError) as exc:
        create_classifier(f"hf:{tmp_path}")
    assert "(UnpicklingError: a weights file is a pickle (of torch.nn.modules.linear.Linear), which is never " \
           "unpickled here; save the weights as safetensors)" in str(exc.value)
    assert not [phrase for phrase in TORCH_ADVICE if phrase in str(exc.value)]


# -- image folders ----------------------------------------------------------------------------------------------
def _folder(root, names, n=2):
    from PIL import Image

    for name in names:
        (root / name).mkdir(parents=True)
        for j in range(n):
            Image.fromarray(np.random.default_rng(j).integers(0, 255, (32, 32), np.uint8)).save(root / name / f"{j}.png")
    return root


def test_a_truncated_png_names_its_file(tmp_path):
    from certify.data import create_dataset

    root = _folder(tmp_path / "d", ["0", "3"])
    data = (root / "3" / "1.png").read_bytes()
    (root / "3" / "1.png").write_bytes(data[: len(data) // 2])  # a valid header, cut short: fails on load()
    ds = create_dataset(f"imagefolder:{root}")
    with pytest.raises(ValueError, match=r"3/1\.png\) cannot be decoded \(image file is truncated\).*remove or replace that file"):
        [ds[i] for i in range(len(ds))]


def test_one_class_folder_keeps_its_label_and_loose_images_are_refused(tmp_path):
    from PIL import Image

    from certify.data import create_dataset

    ds = create_dataset(f"imagefolder:{_folder(tmp_path / 'one', ['7'])}")
    assert ds.targets == [7, 7]  # was: "needs an image column and a label column" (the label was dropped)
    root = _folder(tmp_path / "mixed", ["0", "1"])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "stray.png")
    with pytest.raises(ValueError, match=r"has images outside the class folders \(stray\.png\)"):
        create_dataset(f"imagefolder:{root}")  # was: a third class named after the folder itself
    (tmp_path / "map.json").write_text(json.dumps({"7": -1}))
    with pytest.raises(ValueError, match="class ids must be integers >= 0, got -1"):
        create_dataset(f"imagefolder:{tmp_path / 'one'}", label_map=str(tmp_path / "map.json"))


def test_folder_names_match_class_names_loosely_but_never_ambiguously(tmp_path):
    from certify.data import create_dataset, map_folder_labels

    root = _folder(tmp_path / "d", ["Great_White_Shark", "tench"])
    ds = create_dataset(f"imagefolder:{root}")
    map_folder_labels(ds, ["tench, Tinca tinca", "goldfish", "great white shark, white shark"])  # hf id2label style
    assert ds.targets == [2, 2, 0, 0]
    ds = create_dataset(f"imagefolder:{_folder(tmp_path / 'e', ['crane'])}")
    with pytest.raises(ValueError, match=r"folder 'crane' names 2 classes of the classifier \(\[1, 3\]\); .*label_map"):
        map_folder_labels(ds, ["tench", "crane", "goldfish", "crane"])  # timm's ImageNet labels: bird and machine


# -- listing and plugins ----------------------------------------------------------------------------------------
def test_listing_offers_only_classifiers_and_takes_spec_patterns(capsys):
    from classifiers import list_architectures

    assert list_architectures("*rcnn*") == []  # torchvision's detectors are not classifiers: torchvision:NAME refuses them
    assert "timm:resnet50" in list_architectures("timm:resnet5*")
    assert main(["list", "classifiers", "*rcnn*"]) == 0
    assert "no classifiers match '*rcnn*'" in capsys.readouterr().err


def _dist(root, name, entry):
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[test.twice]\n{entry}\n")


def test_plugin_collisions_name_who_holds_the_name(tmp_path, monkeypatch, caplog):
    for where, name, entry in (("a", "one", "square = json:dumps"), ("b", "one", "square = json:dumps"),
                               ("c", "two", "circle = json:loads"), ("d", "three", "circle = json:dumps"),
                               ("e", "four", "line = json:__name__")):
        (tmp_path / where).mkdir()
        _dist(tmp_path / where, name, entry)
        monkeypatch.syspath_prepend(str(tmp_path / where))
    reg = Registry("widget", entry_point_group="test.twice")
    with caplog.at_level(logging.WARNING):
        assert reg.list() == ["circle", "square"]
    assert reg.entry("square").factory is json.dumps
    assert caplog.text.count("collides") == 1  # one package twice on the path is no collision (was: "the built-in")
    assert re.search(r"widget plugin 'circle' from (two|three) collides with the plugin from (two|three) ", caplog.text)
    assert "widget plugin 'line' from four is not callable" in caplog.text
