"""``clip:``: zero-shot CLIP as a classifier plugin, on tiny CLIPs built from config (offline).

transformers' own zero-shot pipeline and ``CLIPModel`` are the reference for the logits and the
prompt ensembling; the processor on float tensors is the reference for the torch preprocessing.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from certify.attack import soft_loss
from certify.smoothing import Smoothed
from classifiers import create_classifier
from classifiers.clip import class_names, prompt_templates
from denoisers import create_denoiser

NAMES = ["cat", "dog", "container ship", "pickup truck"]


def _save_tiny_clip(directory, resize_edge: int = 32) -> tuple:
    """A random CLIP (32 px images, 8 px patches) and a processor with a byte-level tokenizer whose
    vocabulary is the 256 byte symbols (no merges): every word is spelled letter by letter, offline."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=64, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small),
                        projection_dim=16, logit_scale_init_value=math.log(100.0))  # CLIP's trained scale
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(tokenizer=tokenizer, image_processor=CLIPImageProcessor(
        size={"shortest_edge": resize_edge}, crop_size={"height": 32, "width": 32}))
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-clip")
    model, processor = _save_tiny_clip(directory)
    return directory, model, processor


def _pixels(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_logits_equal_transformers_zero_shot_pipeline_and_clipmodel(tiny):
    from PIL import Image
    from transformers import pipeline

    directory, model, processor = tiny
    clf = create_classifier(f"clip:{directory}", classes=",".join(NAMES))
    assert clf.num_classes == 4 and clf.labels == NAMES and clf.input_size == (32, 32)
    pixels = _pixels(3)  # at the model's size: the processor does not resize, so both see the same pixels
    images = [Image.fromarray(p) for p in pixels]
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ours = clf(x)
        inputs = processor(text=[f"a photo of a {n}." for n in NAMES], images=images, return_tensors="pt", padding=True)
        reference = model(**inputs).logits_per_image
    assert reference.abs().max() > 1  # logits on CLIP's scale (100 x cosine), not a vacuous comparison
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    pipe = pipeline("zero-shot-image-classification", model=str(directory))
    for image, probs in zip(images, ours.softmax(dim=1)):
        scores = {r["label"]: r["score"] for r in pipe(image, candidate_labels=NAMES, hypothesis_template="a photo of a {}.")}
        torch.testing.assert_close(torch.tensor([scores[n] for n in NAMES]), probs, atol=1e-4, rtol=0)


def test_templates_are_ensembled_as_in_the_clip_paper(tiny):
    directory, model, processor = tiny
    templates = ["a photo of a {}.", "art of the {}.", "a {} in a video game."]
    clf = create_classifier(f"clip:{directory}", classes=NAMES, templates=templates)
    x = torch.from_numpy(_pixels(2)).permute(0, 3, 1, 2).float() / 255
    pixel_values = processor.image_processor(images=list(x), do_rescale=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        per_template = [model(**processor.tokenizer([t.format(n) for n in NAMES], padding=True, return_tensors="pt"),
                              pixel_values=pixel_values) for t in templates]
        mean = F.normalize(torch.stack([out.text_embeds for out in per_template]).mean(dim=0), dim=-1)
        expected = model.logit_scale.exp() * per_template[0].image_embeds @ mean.t()
        torch.testing.assert_close(clf(x), expected, atol=1e-4, rtol=1e-4)
        # one template differs from the ensemble: the averaging is not a no-op
        assert not torch.allclose(clf(x), per_template[0].logits_per_image, atol=1e-3)


def test_preprocessing_is_the_processors_in_torch_on_any_size(tmp_path):
    """Shorter side to 36 (bicubic, antialiased), central 32 x 32 crop, CLIP's mean/std: as CLIPProcessor
    does on float images, and differentiable."""
    _, processor = _save_tiny_clip(tmp_path, resize_edge=36)
    clf = create_classifier(f"clip:{tmp_path}", classes="cifar10")
    assert clf.resize_edge == 36 and clf.interpolation == "bicubic" and clf.labels[0] == "airplane"
    for shape in [(2, 3, 40, 52), (2, 3, 61, 45), (2, 3, 32, 32), (2, 3, 36, 36)]:
        x = torch.rand(shape, requires_grad=True)
        ours = clf.preprocess(x)
        reference = processor.image_processor(images=list(x.detach()), do_rescale=False, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
        ours.sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("classes,named", [
    ("nosuchpreset", "'nosuchpreset'"), ("missing/names.txt", "'missing/names.txt'"), ("", "''"),
    ("cat", "'cat'"), ([], "empty list"), ("cat,,dog", "entry 1 is ''"), (["cat", "cat"], "'cat' appears twice"),
    (["cat", 3], "entry 1 is 3"), ({"cat": 0}, "a dict"), (["cat"], "has one name"),
])
def test_unknown_class_sources_are_refused_with_one_line(tiny, classes, named):
    directory, _, _ = tiny
    with pytest.raises(ValueError) as info:
        create_classifier(f"clip:{directory}", classes=classes)
    assert "\n" not in str(info.value) and named in str(info.value), str(info.value)


def test_bad_files_templates_folders_and_options_are_refused_with_one_line(tiny, tmp_path):
    directory, _, _ = tiny
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "broken.json").write_text('["cat", "dog"')
    (tmp_path / "blank.txt").write_text("\n \n")
    cases = [(dict(classes=str(tmp_path / "empty.json")), "empty list"),
             (dict(classes=str(tmp_path / "broken.json")), "not a valid JSON list"),
             (dict(classes=str(tmp_path / "blank.txt")), "empty list"),
             (dict(templates="nosuchpreset"), "templates 'nosuchpreset' is neither a preset (photo, clip7)"),
             (dict(templates="a {c} photo"), "neither a preset"),
             (dict(templates=["{} and {}"]), "exactly once"),
             (dict(templates=["a {} of {0}"]), "exactly once"),
             (dict(clases="cat,dog"), "unknown option 'clases'")]
    for kwargs, expected in cases:
        with pytest.raises(ValueError) as info:
            create_classifier(f"clip:{directory}", **kwargs)
        assert expected in str(info.value) and "\n" not in str(info.value), (kwargs, str(info.value))
    with pytest.raises(ValueError, match=r"^could not load a CLIPModel and CLIPProcessor from '[^']*nothing-here'"):
        create_classifier(f"clip:{tmp_path / 'nothing-here'}", classes="cifar10")


def test_class_names_from_files_and_presets(tmp_path):
    (tmp_path / "names.txt").write_text("tench\n\n great white shark \ngoldfish\n")
    (tmp_path / "names.json").write_text(json.dumps(["a, b", "c"]))
    assert class_names(str(tmp_path / "names.txt")) == ["tench", "great white shark", "goldfish"]
    assert class_names(str(tmp_path / "names.json")) == ["a, b", "c"]  # commas inside names survive a file
    assert len(class_names("imagenet")) == 1000 and class_names("cifar100")[1] == "aquarium fish"
    (tmp_path / "templates.txt").write_text("a photo of a {}.\nitap of a {}.\n")
    assert prompt_templates(str(tmp_path / "templates.txt")) == ["a photo of a {}.", "itap of a {}."]
    assert len(prompt_templates("clip7")) == 7


def test_certifies_behind_a_denoiser_and_gives_gradients(tiny):
    directory, _, _ = tiny
    clf = create_classifier(f"clip:{directory}", classes=NAMES)
    denoiser = create_denoiser("dncnn", in_channels=3, depth=3, features=8)
    g = Smoothed(clf, denoiser, sigma=0.25).eval()
    x = torch.from_numpy(_pixels(1, size=48)[0]).permute(2, 0, 1).float() / 255  # 48 px in, resized to 32 inside
    cert = g.certify_full(x, n0=8, n=40, alpha=0.01, batch_size=16, seed=0, index=0)
    assert cert.prediction in (-1, *range(4)) and cert.radius >= 0 and math.isfinite(cert.radius)
    noisy = (x[None] + 0.25 * torch.randn(6, *x.shape)).clamp(0, 1)
    loss, grad = soft_loss(g, noisy, label=0, chunk=4)
    assert torch.isfinite(loss) and grad.shape == noisy.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_dsmooth_certify_runs_clip_and_refuses_a_bad_class_source_in_one_line(tiny, tmp_path, capsys):
    from certify.cli import main

    pytest.importorskip("foolbox")
    directory, _, _ = tiny
    base = ["certify", "--classifier", f"clip:{directory}", "--dataset", "foolbox:cifar10", "--sigma", "0.25",
            "--n0", "8", "--n", "32", "--batch", "32", "--max", "2", "--quiet"]
    out = tmp_path / "c.tsv"
    assert main([*base, "--classifier-arg", "classes=cifar10", "--out", str(out)]) == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(-1 <= int(r[rows[0].index("predict")]) < 10 for r in rows[1:])
    capsys.readouterr()
    assert main([*base, "--classifier-arg", "classes=nosuchpreset", "--out", str(tmp_path / "x.tsv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsmooth certify: error: --classifier clip:") and "classes 'nosuchpreset' is neither a preset" in err
    assert "\n" not in err  # one line, from the preflight check, before the model is loaded
    assert not (tmp_path / "x.tsv").exists()


def test_the_preflight_check_names_a_bad_class_source_and_a_missing_model(tmp_path):
    from classifiers import CLASSIFIERS

    problems = CLASSIFIERS.check(f"clip:{tmp_path / 'nothing'}", classes="nosuchpreset")
    assert len(problems) == 2 and "no such folder" in problems[0] and "nosuchpreset" in problems[1]
