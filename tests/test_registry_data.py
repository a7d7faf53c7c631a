"""The plugin registry (names, wildcards, entry points, close matches) and the dataset specs."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from certify.data import create_dataset, list_datasets
from certify.registry import Registry, split_spec


def test_spec_parsing():
    assert split_spec("ddpm:./local_dir") == ("ddpm", "./local_dir")
    assert split_spec("hf:user/repo:test") == ("hf", "user/repo:test")
    for bad in ("", "  ", "dncnn:"):
        with pytest.raises(ValueError, match="spec"):
            split_spec(bad)


def test_register_create_list_and_close_matches():
    reg = Registry("gadget", entry_point_group=None)

    @reg.register("dncnn-wide")
    def make(identifier=None, width=1):
        """A wide one."""
        return identifier, width

    reg.register("dncnn")(lambda identifier=None: "plain")
    assert reg.create("dncnn-wide:path/x", width=3) == ("path/x", 3)
    assert reg.list("dncnn*") == ["dncnn", "dncnn-wide"] and reg.list("*wide") == ["dncnn-wide"]
    assert reg.summaries("*wide") == [("dncnn-wide", "A wide one.")]
    with pytest.raises(ValueError, match=r"unknown gadget 'dcnn'; did you mean 'dncnn'"):
        reg.create("dcnn")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("dncnn")(lambda identifier=None: "other")


def test_third_party_plugins_arrive_through_entry_points(tmp_path, monkeypatch):
    """A package installed with an entry point in our group shows up in list_* and create_*."""
    (tmp_path / "acme_denoiser.py").write_text(textwrap.dedent("""
        import torch
        class Blur(torch.nn.Module):
            def forward(self, noisy, sigma):
                return noisy.clamp(0, 1)
        def make(identifier=None):
            return Blur()
    """))
    dist = tmp_path / "acme_denoiser-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-denoiser\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[denoised_smoothing.denoisers]\nacme-blur = acme_denoiser:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = Registry("denoiser", entry_point_group="denoised_smoothing.denoisers")  # as denoisers.DENOISERS, unloaded
    fresh.register("none")(lambda identifier=None: None)
    assert "acme-blur" in fresh.list("acme*")
    out = fresh.create("acme-blur")(torch.full((1, 1, 2, 2), 2.0), 0.25)
    assert float(out.max()) == 1.0


def _plugin_package(root, name: str, files: dict[str, str]) -> str:
    """A throwaway package ``name`` under ``root`` whose face is a Registry(package=name), plus ``files``."""
    folder = root / name
    folder.mkdir()
    (folder / "__init__.py").write_text(textwrap.dedent(f"""
        from certify.registry import Registry
        GADGETS = Registry("gadget", entry_point_group=None, package={name!r})
        register_gadget = GADGETS.register
    """))
    for file, text in files.items():
        (folder / file).write_text(textwrap.dedent(text))
    return name


def test_a_new_plugin_file_is_found_without_editing_a_list(tmp_path, monkeypatch):
    name = _plugin_package(tmp_path, "gadget_pkg_a", {
        "cube.py": """
            from . import register_gadget
            @register_gadget("cube")
            def make(identifier=None, side=1):
                return ("cube", side)
        """,
        "helpers.py": "raise RuntimeError('a module that registers nothing is never imported')\n",
        "_private.py": "from . import register_gadget\nregister_gadget('hidden')(lambda identifier=None: 0)\n",
    })
    (tmp_path / name / "pretrained" / "cube.tiny").mkdir(parents=True)
    (tmp_path / name / "pretrained" / "cube.tiny" / "bundle.json").write_text('{"family": "cube", "summary": "s"}')
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    reg = importlib.import_module(name).GADGETS
    assert reg.list() == ["cube", "cube.tiny"]
    assert reg.create("cube", side=2) == ("cube", 2)
    assert reg.create("cube.tiny") == ("cube", 1)  # the bundled name resolves to cube:DIR
    assert sorted(m for m in sys.modules if m.startswith(name)) == [name, f"{name}.cube"]


def test_a_plugin_taking_a_built_in_name_is_refused_naming_the_holder(tmp_path, monkeypatch):
    name = _plugin_package(tmp_path, "gadget_pkg_b", {
        "cube.py": """
            from . import register_gadget
            @register_gadget("cube")
            def make(identifier=None):
                return "built-in cube"
        """,
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    reg = importlib.import_module(name).GADGETS
    # registered from outside before anything was listed: the built-ins load first, so the clash shows now
    with pytest.raises(ValueError, match=rf"gadget 'cube' is already registered by the built-in gadget "
                                         rf"\({name}.cube\); register yours under another name"):
        reg.register("cube")(lambda identifier=None: "mine")
    assert reg.create("cube") == "built-in cube"
    reg.register("cube-mine")(lambda identifier=None: "mine")
    assert reg.list() == ["cube", "cube-mine"]


def test_the_real_packages_find_their_plugins():
    from certify.registry import plugin_modules

    assert plugin_modules("denoisers", "denoiser") == [
        "denoisers.adm", "denoisers.cm", "denoisers.ddpm", "denoisers.dncnn", "denoisers.edm", "denoisers.ffdnet",
        "denoisers.identity", "denoisers.memnet"]
    assert plugin_modules("classifiers", "classifier") == [
        "classifiers.clip", "classifiers.efficientnet_lite", "classifiers.hf_models", "classifiers.remote",
        "classifiers.small_cnn", "classifiers.timm_models", "classifiers.torchvision_models"]
    from denoisers import DENOISERS

    with pytest.raises(ValueError, match=r"denoiser 'dncnn' is already registered by the built-in denoiser "
                                         r"\(denoisers\.\w+\)"):
        DENOISERS.register("dncnn")(lambda identifier=None: None)


def test_bundled_names_resolve_to_their_family(tmp_path):
    reg = Registry("thing", entry_point_group=None)
    reg.register("fam")(lambda identifier=None, **kw: ("loaded", identifier, kw))
    (tmp_path / "fam.tag_a").mkdir()
    (tmp_path / "fam.tag_a" / "bundle.json").write_text('{"family": "fam", "summary": "a shipped one"}')
    reg.register_bundled(tmp_path)
    assert reg.list("fam.*") == ["fam.tag_a"]
    assert reg.create("fam.tag_a", x=1) == ("loaded", str(tmp_path / "fam.tag_a"), {"x": 1})


def test_mnist5k_fixed_split():
    train, test = create_dataset("mnist5k:train"), create_dataset("mnist5k")
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(test.targets).tolist() == [100] * 10
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    # no digit is in both halves
    train_set = {train[i][0].numpy().tobytes() for i in range(0, 4000, 7)}
    assert not any(test[i][0].numpy().tobytes() in train_set for i in range(0, 1000, 3))


def test_foolbox_samples_are_real_labelled_images():
    ds = create_dataset("foolbox:imagenet")
    assert len(ds) == 20
    x, y = ds[0]
    assert x.shape[0] == 3 and x.shape[1] >= 224 and 0 <= y < 1000
    assert float(x.std()) > 0.05  # a photo, not a blank
    assert create_dataset("foolbox:mnist")[0][0].shape == (1, 28, 28)
    with pytest.raises(ValueError, match="foolbox dataset must be one of"):
        create_dataset("foolbox:svhn")


def _png(path, value, size=(6, 5)):
    from PIL import Image

    Image.fromarray(np.full((*size[::-1], 3), value, np.uint8)).save(path)


def test_imagefolder_and_hf_save_to_disk(tmp_path):
    import datasets

    for label, value in (("cat", 10), ("dog", 250)):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(2):
            _png(tmp_path / "imgs" / label / f"{i}.png", value)
    ds = create_dataset(f"imagefolder:{tmp_path / 'imgs'}")
    assert len(ds) == 4 and ds.class_names == ["cat", "dog"]
    x, y = next((x, y) for x, y in (ds[i] for i in range(4)) if y == 1)
    assert x.shape == (3, 5, 6) and float(x.mean()) == pytest.approx(250 / 255)

    from PIL import Image

    hf = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (0, 255)], "label": [0, 1]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}))
    datasets.DatasetDict({"test": hf}).save_to_disk(str(tmp_path / "hfds"))
    ds = create_dataset(f"hf:{tmp_path / 'hfds'}:test")
    assert len(ds) == 2 and ds.class_names == ["a", "b"] and float(ds[1][0].min()) == 1.0


def test_dataset_listing_and_errors():
    assert {"mnist5k", "foolbox", "imagefolder", "hf", "digits"} <= set(list_datasets())
    with pytest.raises(ValueError, match="imagefolder needs an existing folder"):
        create_dataset("imagefolder:/does/not/exist")
