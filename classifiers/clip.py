"""``clip:HUB_ID_OR_DIR``: a zero-shot classifier, CLIP with class-name prompts (Radford et al. 2021).

The logits are CLIP's: ``logit_scale * cos(image embedding, class embedding)``, where a class's
embedding is the unit-norm mean of its prompts' unit-norm text embeddings, one prompt per template
(the paper's prompt ensembling). The text tower runs once, at construction; a forward pass runs only
the image tower. The preprocessing of ``CLIPProcessor`` (shorter side to its size with its filter,
bicubic and antialiased, the central crop, its mean and std) is re-done in torch *after* the noise, so
the noise stays in [0,1] pixel space and the attack gets gradients.

Options: ``classes`` is a preset (``imagenet``, ``cifar10``, ``cifar100``), a file (one name per line,
or a JSON list), a comma-separated string or a list, in the order of the data set's label ids;
``templates`` is a preset (``photo``: the single ``"a photo of a {}."``; ``clip7``: the seven templates
the CLIP repository's ImageNet prompt-engineering notebook selected), a file, one template or a list.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from certify.checkpoint import one_line

from . import register_classifier
from .base import ImageClassifier
from .hf_models import check_hf, processor_settings

log = logging.getLogger(__name__)

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100's fine labels in their label-id order, '_' written as a space (a prompt reads 'aquarium fish').
CIFAR100 = tuple("""apple|aquarium fish|baby|bear|beaver|bed|bee|beetle|bicycle|bottle|bowl|boy|bridge|bus|
butterfly|camel|can|castle|caterpillar|cattle|chair|chimpanzee|clock|cloud|cockroach|couch|crab|crocodile|cup|
dinosaur|dolphin|elephant|flatfish|forest|fox|girl|hamster|house|kangaroo|keyboard|lamp|lawn mower|leopard|lion|
lizard|lobster|man|maple tree|motorcycle|mountain|mouse|mushroom|oak tree|orange|orchid|otter|palm tree|pear|
pickup truck|pine tree|plain|plate|poppy|porcupine|possum|rabbit|raccoon|ray|road|rocket|rose|sea|seal|shark|shrew|
skunk|skyscraper|snail|snake|spider|squirrel|streetcar|sunflower|sweet pepper|table|tank|telephone|television|tiger|
tractor|train|trout|tulip|turtle|wardrobe|whale|willow tree|wolf|woman|worm""".replace("\n", "").split("|"))
# WordNet's first lemma names two ImageNet classes twice ('crane', 'maillot'): these four get distinct names
# (the crane's sense; the maillot's definition, 'tights for dancers', and its other lemma, 'tank suit').
IMAGENET_DISTINCT = {134: "crane bird", 517: "construction crane", 638: "tights", 639: "tank suit"}
TEMPLATES = {
    "photo": ("a photo of a {}.",),
    "clip7": ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",  # 'a origami': sic
              "a {} in a video game.", "art of the {}.", "a photo of the small {}."),
}


def imagenet_names() -> list[str]:
    """ImageNet-1k's class names in label order: WordNet's first lemma of each synset as timm ships it
    (``timm.data.ImageNetInfo().label_descriptions()``, e.g. ``'tench, Tinca tinca'`` -> ``'tench'``).
    timm does not ship the CLIP paper's hand-edited names; give those as a file (``classes=FILE``).

    >>> names = imagenet_names()
    >>> len(names), len(set(names)), names[:3], names[134], names[517]
    (1000, 1000, ['tench', 'goldfish', 'great white shark'], 'crane bird', 'construction crane')
    """
    from timm.data import ImageNetInfo

    names = [d.split(",")[0].strip() for d in ImageNetInfo("imagenet-1k").label_descriptions()]
    return [IMAGENET_DISTINCT.get(i, n) for i, n in enumerate(names)]


PRESETS = {"imagenet": imagenet_names, "cifar10": lambda: list(CIFAR10), "cifar100": lambda: list(CIFAR100)}


def _read_list(path: str, what: str) -> list:
    """A file's entries: a JSON list, or one entry per non-blank line."""
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"could not read the {what} file {path!r} ({one_line(exc)})") from None
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the {what} file {path!r} is not a valid JSON list ({exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _checked(entries: object, what: str, expected: str) -> list[str]:
    """Distinct, non-empty strings (stripped), or one line saying which entry is not."""
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"{what} must be a list of strings, got a {type(entries).__name__}; expected {expected}")
    if not entries:
        raise ValueError(f"{what} is an empty list; expected {expected}")
    names: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"{what} entry {i} is {entry!r}; expected a non-empty string")
        if entry.strip() in names:
            raise ValueError(f"{what} {entry.strip()!r} appears twice; each must be distinct")
        names.append(entry.strip())
    return names


def class_names(classes: str | Sequence[str]) -> list[str]:
    """The class names from a preset, a file, a comma-separated string or a list (two or more, distinct).

    >>> class_names("cifar10")[:3], class_names("cat, dog"), len(class_names("cifar100"))
    (['airplane', 'automobile', 'bird'], ['cat', 'dog'], 100)
    >>> class_names("nosuchpreset")
    Traceback (most recent call last):
    ...
    ValueError: classes 'nosuchpreset' is neither a preset (imagenet, cifar10, cifar100), an existing file (one name per line, or a JSON list) nor a comma-separated list of two or more names
    """
    if isinstance(classes, str):
        if classes.strip() in PRESETS:
            return PRESETS[classes.strip()]()
        if os.path.isfile(os.path.expanduser(classes)):
            classes = _read_list(os.path.expanduser(classes), "classes")
        elif "," in classes:
            classes = classes.split(",")
        else:
            raise ValueError(f"classes {classes!r} is neither a preset ({', '.join(PRESETS)}), an existing file "
                             f"(one name per line, or a JSON list) nor a comma-separated list of two or more names")
    names = _checked(classes, "classes", "two or more class names")
    if len(names) < 2:
        raise ValueError(f"classes {names!r} has one name; a zero-shot classifier needs two or more")
    return names


def prompt_templates(templates: str | Sequence[str]) -> list[str]:
    """Templates with one ``{}`` for the class name: a preset (``photo``, ``clip7``), a file, one template or a list.

    >>> prompt_templates("photo"), len(prompt_templates("clip7")), prompt_templates("a sketch of a {}.")
    (['a photo of a {}.'], 7, ['a sketch of a {}.'])
    """
    if isinstance(templates, str):
        if templates.strip() in TEMPLATES:
            return list(TEMPLATES[templates.strip()])
        if os.path.isfile(os.path.expanduser(templates)):
            templates = _read_list(os.path.expanduser(templates), "templates")
        elif "{}" in templates:
            templates = [templates]
        else:
            raise ValueError(f"templates {templates!r} is neither a preset ({', '.join(TEMPLATES)}), an existing "
                             f"file nor a template with '{{}}' for the class name")
    found = _checked(templates, "templates", "one or more templates with '{}'")
    for t in found:
        try:
            ok = t.count("{}") == 1 and t.format("x") is not None
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"template {t!r} must hold '{{}}' exactly once (the class name) and no other braces")
    return found


@torch.no_grad()
def _class_embeddings(model: nn.Module, tokenizer, names: Sequence[str], templates: Sequence[str],
                     batch: int = 256) -> torch.Tensor:
    """(K, D) unit vectors: per class, the renormalized mean over templates of its prompts' unit-norm text
    embeddings (CLIP's prompt ensembling; with one template, that prompt's embedding)."""
    prompts = [t.format(n) for n in names for t in templates]  # class-major: row k * T + j
    max_length = int(model.config.text_config.max_position_embeddings)
    parts = []
    for start in range(0, len(prompts), batch):
        tokens = tokenizer(prompts[start:start + batch], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")
        parts.append(F.normalize(model.get_text_features(**tokens).pooler_output.float(), dim=-1))
    mean = torch.cat(parts).view(len(names), len(templates), -1).mean(dim=1)
    return F.normalize(mean, dim=-1)


class _ZeroShotHead(nn.Module):
    """pixel_values -> ``logit_scale * cos(image embedding, class embeddings)``: CLIP's image tower only."""

    def __init__(self, model: nn.Module, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection
        self.register_buffer("class_embeddings", embeddings.detach().clone())
        self.register_buffer("logit_scale", model.logit_scale.detach().float().exp().clone())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)
        return self.logit_scale * F.normalize(image, dim=-1) @ self.class_embeddings.t().to(image.dtype)


class ZeroShotClassifier(ImageClassifier):
    """``ImageClassifier`` with CLIPProcessor's geometry: the shorter side resized to ``resize_edge``
    (aspect kept, the longer side truncated as transformers does; the processor's filter, antialiased),
    then the central ``input_size`` crop. The base class resizes straight to ``input_size`` (kept for
    ``resize_edge=None``), which distorts a non-square image; for a square one and ``resize_edge`` equal
    to the crop (every OpenAI CLIP) both are the same.

    >>> clf = ZeroShotClassifier(nn.Flatten(), resize_edge=36, num_classes=3, input_size=(32, 32))
    >>> clf.preprocess(torch.rand(1, 3, 40, 52)).shape  # 40 x 52 -> 36 x 46 -> the central 32 x 32
    torch.Size([1, 3, 32, 32])
    """

    def __init__(self, model: nn.Module, resize_edge: int | None, **kwargs) -> None:
        super().__init__(model, **kwargs)
        if resize_edge is not None and not (self.input_size and resize_edge >= max(self.input_size)):
            raise ValueError(f"{self.name}: the processor resizes to {resize_edge} px but crops {self.input_size}; "
                             f"expected a resize edge at least the crop size")
        self.resize_edge = resize_edge

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if self.resize_edge is not None and images.ndim == 4:
            (h, w), e, (ch, cw) = images.shape[-2:], self.resize_edge, self.input_size
            size = (e, int(e * w / h)) if h <= w else (int(e * h / w), e)
            if size != (h, w):
                smooth = self.interpolation in ("bilinear", "bicubic")
                images = F.interpolate(images, size=size, mode=self.interpolation, antialias=smooth,
                                       **({"align_corners": False} if smooth else {}))
            top, left = int((size[0] - ch) / 2.0), int((size[1] - cw) / 2.0)
            images = images[..., top:top + ch, left:left + cw]
        return super().preprocess(images)


def check_clip(identifier: str | None = None, classes: str | Sequence[str] = "imagenet",
               templates: str | Sequence[str] = "photo", **_: object) -> list[str]:
    """Preflight: the model (as `classifiers.hf_models.check_hf`), the class names and the templates."""
    problems = check_hf(identifier)
    for read, value in ((class_names, classes), (prompt_templates, templates)):
        try:
            read(value)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


@register_classifier("clip", summary="clip:HUB_ID_OR_DIR, zero-shot CLIP with class-name prompts "
                                     "(classes=imagenet|cifar10|cifar100|FILE|a,b,c; templates=photo|clip7|FILE)",
                     check=check_clip)
def create_clip(identifier: str | None = None, classes: str | Sequence[str] = "imagenet",
                templates: str | Sequence[str] = "photo") -> ZeroShotClassifier:
    """``clip:openai/clip-vit-base-patch32`` or ``clip:/path/saved/with/save_pretrained`` (a ``CLIPModel``
    and a ``CLIPProcessor``); the labels are the class names, in label-id order.

    >>> create_clip("openai/clip-vit-base-patch32", classes="cat")
    Traceback (most recent call last):
    ...
    ValueError: classes 'cat' is neither a preset (imagenet, cifar10, cifar100), an existing file (one name per line, or a JSON list) nor a comma-separated list of two or more names
    """
    from transformers import CLIPModel, CLIPProcessor

    if not identifier:
        raise ValueError("clip classifier needs a hub id or a local folder, e.g. 'clip:openai/clip-vit-base-patch32'")
    names, prompts = class_names(classes), prompt_templates(templates)  # checked before anything loads
    source = os.path.expanduser(identifier)
    try:
        model = CLIPModel.from_pretrained(source, dtype=torch.float32).eval()
        processor = CLIPProcessor.from_pretrained(source)
    except Exception as exc:  # missing files, no tokenizer, a config that is not CLIP's: one line
        raise ValueError(f"could not load a CLIPModel and CLIPProcessor from {identifier!r} ({one_line(exc)})") from None
    image_processor = processor.image_processor
    settings = processor_settings(image_processor, model.config.vision_config)
    size = image_processor.size
    edge = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    embeddings = _class_embeddings(model, processor.tokenizer, names, prompts)
    log.info("clip:%s %d classes x %d templates, preprocessing %s, resize edge %s",
             identifier, len(names), len(prompts), settings, edge)
    return ZeroShotClassifier(_ZeroShotHead(model, embeddings), resize_edge=int(edge) if edge else None,
                              num_classes=len(names), labels=names, name=f"clip:{identifier}", **settings)
