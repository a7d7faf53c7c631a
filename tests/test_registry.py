"""certify/registry.py, the one plugin registry: specs, registering, listing with wildcards, close matches, plugin
files found in their package without a list, bundled names, third-party plugins by entry point and every
collision named with who holds the name; a factory's signature decides which options it takes (a TypeError of
its own is not taken for a bad option), and fresh models refuse options they would ignore and absurd sizes."""

from __future__ import annotations

import importlib
import json
import logging
import re
import sys
import textwrap

import pytest
import torch

from certify.data import create_dataset
from certify.registry import Registry, split_spec
from classifiers import create_classifier
from denoisers import DENOISERS, create_denoiser
from fixtures import fake_distribution


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
    fake_distribution(tmp_path, "acme-denoiser", "1.0", "[denoised_smoothing.denoisers]\nacme-blur = acme_denoiser:make\n")
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



def test_a_keyword_the_plugin_does_not_take_is_one_line():
    with pytest.raises(ValueError, match=r"^unknown option 'colour' for dataset 'digits'; it takes no options$"):
        create_dataset("digits:test", colour=True)
    with pytest.raises(ValueError, match=r"^unknown option 'colour' for dataset 'imagefolder'; it takes size, label_map$"):
        create_dataset("imagefolder:.", colour=True)


def test_a_plugin_named_like_a_built_in_is_reported(tmp_path, monkeypatch, caplog):
    fake_distribution(tmp_path, "clashing", "2.0", "[test.clash]\nsquare = json:dumps\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", entry_point_group="test.clash")
    reg.register("square")(lambda identifier=None: "built-in")
    with caplog.at_level(logging.WARNING):
        assert reg.create("square") == "built-in"
    assert "widget plugin 'square' from clashing collides with the built-in" in caplog.text


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
    with pytest.raises(ValueError, match=r"^unknown option 'widht' for classifier 'small-cnn'; did you mean 'width'\?; it takes in_channels, "):
        create_classifier("small-cnn", widht=8)  # was stored in the config and ignored
    with pytest.raises(ValueError, match=r"efficientnet-lite0 is the shipped ImageNet weights, so it does not take "
                                         r"\['pretrained'\]"):
        create_classifier("efficientnet-lite0", pretrained=False)  # was ignored: the shipped weights loaded anyway
    with pytest.raises(ValueError, match=r"dncnn with options \{'features': 10000000\} describes a network of more"):
        create_denoiser("dncnn", features=10**7)  # was a RuntimeError from the allocator (36 TB)
    with pytest.raises(ValueError, match="small-cnn needs integer sizes >= 1"):
        create_classifier("small-cnn", width=-1)  # was a RuntimeError (negative dimension)


def test_plugin_collisions_name_who_holds_the_name(tmp_path, monkeypatch, caplog):
    for where, name, entry in (("a", "one", "square = json:dumps"), ("b", "one", "square = json:dumps"),
                               ("c", "two", "circle = json:loads"), ("d", "three", "circle = json:dumps"),
                               ("e", "four", "line = json:__name__")):
        fake_distribution(tmp_path / where, name, "1.0", f"[test.twice]\n{entry}\n")
        monkeypatch.syspath_prepend(str(tmp_path / where))
    reg = Registry("widget", entry_point_group="test.twice")
    with caplog.at_level(logging.WARNING):
        assert reg.list() == ["circle", "square"]
    assert reg.entry("square").factory is json.dumps
    assert caplog.text.count("collides") == 1  # one package twice on the path is no collision (was: "the built-in")
    assert re.search(r"widget plugin 'circle' from (two|three) collides with the plugin from (two|three) ", caplog.text)
    assert "widget plugin 'line' from four is not callable" in caplog.text



def test_a_factory_that_hands_options_on_declares_them_and_check_refuses_a_typo():
    """`dsmooth check` said ok to --denoiser-arg num_step=3 for ddpm: (its factory hands **kwargs on), and the
    run then refused it naming an internal class; the factory's declared options answer both, before loading."""
    reg = Registry("widget", entry_point_group=None)
    factory = reg.register("forwards")(lambda identifier=None, **options: _inner(**options))
    factory.options = ("size",)
    refusal = "unknown option 'sise' for widget 'forwards'; did you mean 'size'?; it takes size"
    assert reg.check("forwards", sise=2) == [refusal]
    with pytest.raises(ValueError, match=re.escape(refusal)):
        reg.create("forwards", sise=2)
    assert reg.create("forwards", size=3) == 3
    problems = DENOISERS.check("ddpm.mnist5k", num_step=3)
    assert problems == ["unknown option 'num_step' for denoiser 'ddpm'; did you mean 'num_steps'?; it takes dtype, "
                        "prediction_type, timestep_rule, num_steps, eta, resize"]
