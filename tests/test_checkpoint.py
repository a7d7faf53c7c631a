"""certify/checkpoint.py and classifiers/state_files.py, checkpoints: config + weights read before any network is
built (compared on the meta device, absurd sizes refused before allocating), weights-only reading (a pickle is
refused, named, in our words, never torch's advice), damaged or mismatched files in one line, a state file that
does not fit its network named, and a seeded fresh model unchanged by the size probe."""

from __future__ import annotations

import argparse
import json
import os
import pickle

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from certify.cli import main
from certify.training import load_training_state
from classifiers import create_classifier
from classifiers.small_cnn import SmallCNN
from classifiers.state_files import fit_state, read_state_file
from denoisers import create_denoiser
from denoisers.dncnn import DnCNN
from fixtures import TORCH_ADVICE, digits_args


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


class _EvilSystem:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_and_non_tensor_checkpoints_are_refused(tmp_path):
    for name, payload in (("evil.pth", _Evil()), ("list.pth", [1, 2, 3])):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        create_denoiser("dncnn", in_channels=1, depth=3, features=4).save_pretrained(d)
        (d / "model.safetensors").unlink()
        with open(d / name, "wb") as fh:
            pickle.dump(payload, fh)
        with pytest.raises(ValueError, match="weights-only torch file|not a state dict of tensors"):
            create_denoiser(f"dncnn:{d}")


def test_truncated_safetensors_weights_file_is_one_line(tmp_path):
    save_file({"w": torch.ones(1000)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_state_file(tmp_path / "w.safetensors")


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


def test_seeded_fresh_models_are_unchanged_by_the_size_probe():
    torch.manual_seed(0)
    direct = DnCNN(in_channels=1, depth=4, features=8).state_dict()
    torch.manual_seed(0)
    made = create_denoiser("dncnn", in_channels=1, depth=4, features=8).state_dict()
    assert all(torch.equal(direct[k], made[k]) for k in direct)


def test_a_bad_small_cnn_config_is_one_line(tmp_path):
    SmallCNN(width=4, image_size=8).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_classes": -1}))
    with pytest.raises(ValueError, match=r"does not describe a small-cnn: .*got \{'num_classes': -1\}"):
        create_classifier(f"small-cnn:{tmp_path}")


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


def test_corrupted_or_mismatched_checkpoint_is_a_clear_error(tmp_path):
    DnCNN(1, depth=4, features=8, sigma=0.25).save_pretrained(tmp_path / "ok")
    bad = tmp_path / "corrupt"
    DnCNN(1, depth=4, features=8, sigma=0.25).save_pretrained(bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        create_denoiser(f"dncnn:{bad}")
    mismatch = tmp_path / "mismatch"
    DnCNN(1, depth=4, features=8, sigma=0.25).save_pretrained(mismatch)
    cfg = json.loads((mismatch / "config.json").read_text())
    (mismatch / "config.json").write_text(json.dumps({**cfg, "features": 16}))
    with pytest.raises(ValueError, match="do not match their config"):
        create_denoiser(f"dncnn:{mismatch}")
    (mismatch / "config.json").write_text(json.dumps({**cfg, "depth": 7}))
    with pytest.raises(ValueError, match="do not match their config"):
        create_denoiser(f"dncnn:{mismatch}")
    (mismatch / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        create_denoiser(f"dncnn:{mismatch}")
    with pytest.raises(ValueError, match="expected 'memnet'"):
        create_denoiser(f"memnet:{tmp_path / 'ok'}")
    with pytest.raises(ValueError, match="neither a local folder"):
        create_denoiser(f"dncnn:{tmp_path / 'missing'}")



def test_mismatched_checkpoint_is_a_clear_error(cnn_dir, tmp_path, capsys):
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((cnn_dir / "model.safetensors").read_bytes())
    config = json.loads((cnn_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(config | {"width": 16}))
    assert main(digits_args(bad, tmp_path / "r.tsv")) == 2
    assert "do not match their config" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]



def test_state_file_pairing_rejects_a_wrong_file(tmp_path):
    state = nn.Linear(3, 3).state_dict()
    with pytest.raises(ValueError, match="shape mismatch"):
        fit_state(nn.Linear(3, 4).state_dict(), state, source="w.pth")
    with pytest.raises(ValueError, match="does not fit"):
        fit_state(nn.Sequential(nn.Linear(3, 4)).state_dict(), state, source="w.pth")

