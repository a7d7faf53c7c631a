"""certify/settings.py and certify/schema.py, the run schema: every setting has one CLI flag, one compare key and
help, each checked once where it enters (sigma, seed, batch, mode, options of another mode, step against the
batch); the recipe's example config is valid; the manifest records the versions of plugin distributions."""

from __future__ import annotations

import pytest
import yaml

from certify.cli import build_parser
from certify.schema import FLAG, KEYWORDS
from certify.settings import RunSettings, package_versions, schema
from fixtures import ROOT, fake_distribution


def test_every_setting_has_one_flag_and_one_config_key_and_help():
    commands = build_parser()._subparsers._group_actions[0].choices
    flags = {f for command in ("certify", "predict", "attack") for action in commands[command]._actions
             for f in action.option_strings}
    for name, option in schema().items():
        if name == "mode":
            continue
        assert option.flag in flags, name  # a flag of the command that runs its mode
        assert option.key == name and option.help, name  # the compare key is the name the manifest records
        assert option.kind in (FLAG, KEYWORDS) or option.check is not None or option.choices or name in (
            "classifier", "dataset", "denoiser", "mode", "radii"), f"{name}: no rule checks it"
    assert len({o.flag for o in schema().values()}) == len(schema())


def test_settings_and_options_are_checked_once_where_they_enter():
    for bad, message in [(dict(sigma=True), "sigma must be a positive, finite number"),
                         (dict(sigma=500), "far beyond any meaningful noise level"),
                         (dict(seed="abc"), "seed must be an int in [0, 2^63)"),
                         (dict(batch=0), "batch must be an int >= 1"),
                         (dict(mode="sequental"), "did you mean 'sequential'"),
                         (dict(options={"futility": 0.3}), "futility is an option of the sequential mode"),
                         (dict(mode="sequential", options={"radii": [0.5], "step": 2000}, batch=1000),
                          "step 2000 is more than the batch of 1000")]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("^", r"\^").replace(")", r"\)")
                           .replace("(", r"\(")):
            RunSettings(**{"classifier": "c", "dataset": "d", "sigma": 0.5, **bad}).validate()



@pytest.mark.parametrize("batch", [0, -3, "big", 2.5])
def test_bad_batch_is_named(batch):
    with pytest.raises(ValueError, match=r"batch must be an int >= 1 or 'auto'"):
        RunSettings(classifier="toy", dataset="toy", sigma=0.25, batch=batch).validate()



def test_certify_recipe_example_config_exists_and_parses():
    doc = (ROOT / "recipes" / "certify_dataset.py").read_text()
    cited = [w for w in doc.split() if w.startswith("recipes/configs/")]
    assert cited
    for path in cited:
        config = yaml.safe_load((ROOT / path).read_text())
        config.pop("out"), config.pop("device", None)
        RunSettings.from_dict(config)



def test_manifest_records_plugin_distribution_versions(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "fakeplug", "1.2.3", "[denoised_smoothing.denoisers]\nfake = fakeplug_mod:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_versions()["fakeplug"] == "1.2.3"

