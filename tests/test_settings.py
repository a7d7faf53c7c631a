"""certify/settings.py and certify/schema.py, the run schema: every setting has one CLI flag, one compare key and
help, each checked once where it enters (sigma, seed, batch, mode, options of another mode, step against the
batch); the recipe's example config is valid; the manifest records the versions of plugin distributions."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from certify.cli import build_parser
from certify.schema import FLAG, KEYWORDS
from certify.settings import RunSettings, package_versions, schema
from fixtures import ROOT, fake_distribution, launch_env


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



@pytest.mark.parametrize("config, message", [
    ("sigma: abc\nout: r.tsv\n", "c.yaml: sigma must be a positive, finite number (noise std in [0,1] pixel units), "
                                  "got 'abc'"),
    ("sigma: 0.25\n", "c.yaml: the config needs out: the result file (a .tsv), got None"),
], ids=["sigma", "no-out"])
def test_the_certify_recipe_answers_a_mistaken_config_in_one_line(config, message, tmp_path):
    (tmp_path / "c.yaml").write_text("classifier: small-cnn.mnist5k\ndataset: mnist5k:test\nn: 20\n" + config)
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "certify_dataset.py"), "--config", "c.yaml"],
                          cwd=tmp_path, env=launch_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == f"certify_dataset.py: error: {message}\n", proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_manifest_records_plugin_distribution_versions(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "fakeplug", "1.2.3", "[denoised_smoothing.denoisers]\nfake = fakeplug_mod:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_versions()["fakeplug"] == "1.2.3"

