"""Dataset readers: class mapping by name, dropped counts, decoding; label-noise injection.

Every fixture image is filled with a brightness that encodes its true
canonical class, so a test can check each decoded image against its label
as well as the label against the dataset's own id or name.
"""
import csv
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import announcing
import wscfer_train.data
from wscfer_train.data import (CANONICAL_CLASSES, FER2013_CLASSES, SkipImage, Subset, data_root, decode_bytes,
                               flip_labels, load_dataset)

BRIGHTNESS = {name: 20 + 28 * index for index, name in enumerate(CANONICAL_CLASSES)}


def write_face(path: Path, class_name: str, shape=(24, 24)) -> Path:
    """A gray image whose brightness names its class; the suffix picks PNG or JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(shape, BRIGHTNESS[class_name], np.uint8))
    return path


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def load(tmp_path, size=24, color="gray", **spec):
    return load_dataset(spec, size=size, color=color, data_root=tmp_path)


def label_names(dataset) -> list[str]:
    return [dataset.class_names[label] for label in dataset.labels]


def assert_images_show_their_labels(dataset):
    """Each image's brightness must be the one written for the class its label names."""
    means = dataset.images.reshape(len(dataset), -1).mean(axis=1)
    expected = [BRIGHTNESS[name] for name in label_names(dataset)]
    np.testing.assert_allclose(means, expected, atol=2)


# ----------------------------------------------------------------------------- FER2013 CSV

def pixel_text(class_name: str) -> str:
    return " ".join([str(BRIGHTNESS[class_name])] * 48 * 48)


def test_fer2013_csv_maps_ids_and_usage_and_counts_bad_rows(tmp_path, caplog):
    rows = [[emotion, pixel_text(name), "Training"] for emotion, name in enumerate(FER2013_CLASSES)]
    rows += [[3, pixel_text("happy"), "PublicTest"],
             [4, pixel_text("sad"), "PrivateTest"],
             [0, "1 2 3", "Training"],                            # too few pixels (line 11)
             [0, pixel_text("angry") + " 20", "Training"],         # one too many
             [0, "", "Training"],                                 # none
             [0, pixel_text("angry").replace("20", "x", 1), "Training"],  # not a number
             [0, pixel_text("angry").replace("20", "300", 1), "Training"]]  # out of range
    write_csv(tmp_path / "fer" / "fer2013.csv", ["emotion", "pixels", "Usage"], rows)

    with caplog.at_level(logging.WARNING, logger="wscfer_train.data"):
        train = load(tmp_path, format="fer2013_csv", root="fer")
    assert train.class_names == list(FER2013_CLASSES)
    assert label_names(train) == list(FER2013_CLASSES)
    assert train.images.shape == (7, 24, 24) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    assert train.dropped == {"bad pixel values": 5}
    assert "5 image(s) left out" in caplog.text and "fer2013.csv:11 (bad pixel values)" in caplog.text
    assert_images_show_their_labels(train)

    public = load(tmp_path, size=64, color="rgb", format="fer2013_csv", root="fer", usage="PublicTest")
    assert label_names(public) == ["happy"] and public.images.shape == (1, 64, 64, 3)
    assert public.name == "fer2013-csv:PublicTest"


def test_fer2013_csv_rejects_unknown_ids_and_usages(tmp_path):
    write_csv(tmp_path / "fer" / "fer2013.csv", ["emotion", "pixels", "Usage"],
              [[7, pixel_text("angry"), "Training"], [9, pixel_text("angry"), "Training"],
               [-1, pixel_text("angry"), "Training"]])
    with pytest.raises(ValueError, match=r"unknown class ids \[-1, 7, 9\]"):
        load(tmp_path, format="fer2013_csv", root="fer")
    with pytest.raises(ValueError, match="Validation"):
        load(tmp_path, format="fer2013_csv", root="fer", usage="Validation")


# ----------------------------------------------------------------------------- folders

def test_fer2013_folder_maps_folder_names_not_alphabetical_order(tmp_path, caplog):
    root = tmp_path / "fer2013" / "train"
    expected = Counter()
    for index, name in enumerate(FER2013_CLASSES):
        for copy in range(index % 3 + 1):
            write_face(root / name / f"Training_{index}{copy}.jpg", name, (48, 48))
            expected[name] += 1
    corrupt = root / "happy" / "Training_corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "sad" / "Training_empty.jpg").write_bytes(b"")
    (root / "sad" / "notes.txt").write_text("not an image")

    with caplog.at_level(logging.WARNING, logger="wscfer_train.data"):
        dataset = load(tmp_path, size=48, format="fer2013_folder", root="fer2013/train")
    assert dataset.class_names == list(FER2013_CLASSES)
    assert Counter(label_names(dataset)) == expected
    # Sorted folder order would make neutral 4; FER2013's id is 6.
    assert set(dataset.labels[np.array(label_names(dataset)) == "neutral"]) == {6}
    assert dataset.dropped == {"undecodable": 1, "empty": 1, "not an image file": 1}
    assert str(corrupt) in caplog.text
    assert dataset.name == "fer2013-folder:train"
    assert_images_show_their_labels(dataset)
    summary = dataset.summary()
    assert "fear 3" in summary and "neutral 1" in summary and "undecodable 1" in summary


def test_fer2013_folder_rejects_an_unknown_class_folder(tmp_path):
    write_face(tmp_path / "fer" / "happy" / "a.png", "happy")
    write_face(tmp_path / "fer" / "smiling" / "b.png", "happy")
    with pytest.raises(ValueError, match=r"\['smiling'\]"):
        load(tmp_path, format="fer2013_folder", root="fer")


def test_folder_uses_the_class_map_and_keeps_canonical_order(tmp_path):
    root = tmp_path / "faces"
    write_face(root / "smiles" / "1.png", "happy")
    write_face(root / "smiles" / "2.png", "happy")
    write_face(root / "scowls" / "1.png", "angry")
    write_face(root / "other" / "1.png", "neutral")
    write_face(root / "other" / "2.png", "neutral")
    class_map = {"smiles": "happy", "scowls": "angry", "other": None}

    dataset = load(tmp_path, format="folder", root="faces", class_map=class_map)
    assert dataset.class_names == ["angry", "happy"]
    assert sorted(label_names(dataset)) == ["angry", "happy", "happy"]
    assert dataset.dropped == {"skipped by class map": 2}
    assert_images_show_their_labels(dataset)


def test_folder_errors_name_what_is_wrong(tmp_path):
    write_face(tmp_path / "faces" / "smiles" / "1.png", "happy")
    write_face(tmp_path / "faces" / "frowns" / "1.png", "sad")
    with pytest.raises(ValueError, match=r"\['frowns'\]"):
        load(tmp_path, format="folder", root="faces", class_map={"smiles": "happy"})
    with pytest.raises(ValueError, match=r"unknown class names \['joy', 'gloom'\].*contempt"):
        load(tmp_path, format="folder", root="faces", class_map={"smiles": "joy", "frowns": "gloom"})
    with pytest.raises(ValueError, match="needs the options"):
        load(tmp_path, format="folder", root="faces")


def test_rgb_channel_order_and_centre_square_crop(tmp_path):
    # A wide BGR image: its centre square is (B, G, R) = (10, 100, 200), the side strips black.
    image = np.zeros((30, 60, 3), np.uint8)
    image[:, 15:45] = (10, 100, 200)
    (tmp_path / "faces" / "x").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "faces" / "x" / "wide.png"), image)

    rgb = load(tmp_path, size=20, color="rgb", format="folder", root="faces", class_map={"x": "fear"})
    assert rgb.images.shape == (1, 20, 20, 3)
    assert (rgb.images[0] == (200, 100, 10)).all()
    gray = load(tmp_path, size=20, color="gray", format="folder", root="faces", class_map={"x": "fear"})
    assert gray.images.shape == (1, 20, 20)
    assert abs(int(gray.images[0, 10, 10]) - cv2.cvtColor(image[:1, 30:31], cv2.COLOR_BGR2GRAY)[0, 0]) <= 1


# ----------------------------------------------------------------------------- RAF-DB

RAFDB_IDS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral"}


def test_rafdb_maps_its_one_based_ids_by_name(tmp_path):
    root = tmp_path / "raf"
    lines = []
    for raf_id, name in RAFDB_IDS.items():
        lines.append(f"train_{raf_id:05d}.jpg {raf_id}")
        write_face(root / "Image" / "aligned" / f"train_{raf_id:05d}_aligned.jpg", name)
    lines.append("test_0001.jpg 4")
    write_face(root / "Image" / "aligned" / "test_0001.jpg", "happy")  # original name, no _aligned
    lines.append("test_0002.jpg 5")  # listed, image missing
    (root / "EmoLabel").mkdir()
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")

    train = load(tmp_path, format="rafdb", root="raf")
    assert train.class_names == list(FER2013_CLASSES)
    assert label_names(train) == list(RAFDB_IDS.values())
    assert train.dropped == {}
    assert_images_show_their_labels(train)

    test = load(tmp_path, format="rafdb", root="raf", split="test")
    assert label_names(test) == ["happy"]
    assert test.dropped == {"missing file": 1}


def test_rafdb_rejects_unknown_ids(tmp_path):
    (tmp_path / "raf" / "EmoLabel").mkdir(parents=True)
    (tmp_path / "raf" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 8\n"
                                                                          "train_00002.jpg 0\n")
    with pytest.raises(ValueError, match=r"unknown class ids \[0, 8\]"):
        load(tmp_path, format="rafdb", root="raf")


# ----------------------------------------------------------------------------- FERPlus

FERPLUS_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger",
                  "disgust", "fear", "contempt", "unknown", "NF"]


def votes(**counts) -> list[int]:
    return [counts.get(column, 0) for column in FERPLUS_HEADER[2:]]


@pytest.fixture
def ferplus_root(tmp_path) -> Path:
    root = tmp_path / "ferplus"
    rows = []
    clear_winners = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise",
                     "sadness": "sad", "anger": "angry", "disgust": "disgust", "fear": "fear",
                     "contempt": "contempt"}
    for number, (column, name) in enumerate(clear_winners.items()):
        image_name = f"fer{number:07d}.png"
        rows.append(["Training", image_name, *votes(**{column: 6, "neutral": 3, "NF": 1}
                                                      if column != "neutral" else {column: 7, "sadness": 3})])
        write_face(root / "FER2013Train" / image_name, name, (48, 48))
    rows += [["Training", "fer0000100.png", *votes(happiness=4, surprise=4, neutral=2)],  # tie
             ["Training", "fer0000101.png", *votes(unknown=5, fear=3, sadness=2)],
             ["Training", "fer0000102.png", *votes(NF=10)],
             ["Training", "", *votes(NF=10)],  # FERPlus removed this image
             ["Training", " ", *votes(neutral=10)],
             ["PublicTest", "fer0000200.png", *votes(anger=9, disgust=1)]]
    write_face(root / "FER2013Valid" / "fer0000200.png", "angry", (48, 48))
    write_csv(root / "fer2013new.csv", FERPLUS_HEADER, rows)
    return root


def test_ferplus_majority_vote_and_dropped_rows(tmp_path, ferplus_root):
    dataset = load(tmp_path, size=48, format="ferplus", root="ferplus")
    assert dataset.class_names == list(CANONICAL_CLASSES)
    assert label_names(dataset) == ["neutral", "happy", "surprise", "sad", "angry", "disgust", "fear",
                                    "contempt"]
    assert dataset.dropped == {"no majority": 1, "unknown": 1, "NF": 1, "no image name": 2}
    assert_images_show_their_labels(dataset)

    seven = load(tmp_path, size=48, format="ferplus", root="ferplus", include_contempt=False)
    assert seven.class_names == list(FER2013_CLASSES)
    assert "contempt" not in label_names(seven) and len(seven) == 7
    assert seven.dropped == {"no majority": 1, "unknown": 1, "NF": 1, "no image name": 2, "contempt": 1}
    assert_images_show_their_labels(seven)

    public = load(tmp_path, size=48, format="ferplus", root="ferplus", usage="PublicTest")
    assert label_names(public) == ["angry"] and public.dropped == {}


def test_ferplus_reports_missing_columns_and_votes_that_are_not_counts(tmp_path):
    write_csv(tmp_path / "ferplus" / "fer2013new.csv", FERPLUS_HEADER[:-1], [])
    with pytest.raises(ValueError, match=r"missing columns \['NF'\]"):
        load(tmp_path, format="ferplus", root="ferplus")
    write_csv(tmp_path / "ferplus" / "fer2013new.csv", FERPLUS_HEADER,
              [["Training", "a.png", *votes(happiness=9)], ["Training", "b.png", "x", *votes()[1:]]])
    with pytest.raises(ValueError, match=r"fer2013new.csv:3: expected an integer, got 'x'"):
        load(tmp_path, format="ferplus", root="ferplus")


# ----------------------------------------------------------------------------- AffectNet

AFFECTNET_IDS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt")
AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"]


def write_affectnet_image(path: Path, class_name: str, box) -> Path:
    """A black 80x100 picture with the face box filled with the class's brightness."""
    image = np.zeros((80, 100), np.uint8)
    x, y, width, height = box
    image[y:y + height, x:x + width] = BRIGHTNESS[class_name]
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def affectnet_root(tmp_path) -> Path:
    root = tmp_path / "affectnet"
    rows = []
    for expression in range(11):
        name = AFFECTNET_IDS[expression] if expression < 8 else "neutral"
        relative = f"{expression + 100}/face{expression}.png"
        box = (10 + expression, 5 + expression, 40, 40)
        write_affectnet_image(root / "Manually_Annotated_Images" / relative, name, box)
        rows.append([relative, *box, "1.0;2.0;3.0", expression, 0.1, -0.2])
    write_affectnet_image(root / "Manually_Annotated_Images" / "200" / "outside.png", "happy", (0, 0, 10, 10))
    rows.append(["200/outside.png", 150, 10, 20, 20, "", 1, 0.5, 0.5])
    write_csv(root / "training.csv", AFFECTNET_HEADER, rows)
    write_csv(root / "validation.csv", AFFECTNET_HEADER, rows[:2])
    return root


def test_affectnet_maps_ids_crops_faces_and_drops_8_to_10(tmp_path, affectnet_root):
    dataset = load(tmp_path, size=32, format="affectnet", root="affectnet")
    assert dataset.class_names == list(CANONICAL_CLASSES)
    assert label_names(dataset) == list(AFFECTNET_IDS)
    assert dataset.dropped == {"label none (8)": 1, "label uncertain (9)": 1, "label non-face (10)": 1,
                               "face box outside image": 1}
    # The crop keeps only the filled face box, so each image is uniform at its class's brightness.
    assert_images_show_their_labels(dataset)
    assert (dataset.images.min(axis=(1, 2)) == dataset.images.max(axis=(1, 2))).all()

    seven = load(tmp_path, size=32, format="affectnet", root="affectnet", num_classes=7)
    assert seven.class_names == list(FER2013_CLASSES)
    assert label_names(seven) == list(AFFECTNET_IDS[:7])
    assert seven.dropped["contempt"] == 1

    whole = load(tmp_path, size=32, format="affectnet", root="affectnet", crop_faces=False, split="val")
    assert whole.name == "affectnet:val" and label_names(whole) == ["neutral", "happy"]
    assert (whole.images.min(axis=(1, 2)) == 0).all(), "uncropped images keep the black background"


def test_affectnet_rejects_ids_beyond_10(tmp_path):
    write_csv(tmp_path / "affectnet" / "training.csv", AFFECTNET_HEADER,
              [["1/a.png", 0, 0, 10, 10, "", 11, 0, 0], ["1/b.png", 0, 0, 10, 10, "", -1, 0, 0]])
    with pytest.raises(ValueError, match=r"unknown class ids \[-1, 11\]"):
        load(tmp_path, format="affectnet", root="affectnet")


# ----------------------------------------------------------------------------- specs

def test_spec_errors_are_clear(tmp_path):
    write_face(tmp_path / "fer" / "happy" / "a.png", "happy")
    with pytest.raises(ValueError, match="unknown dataset format 'kaggle'"):
        load(tmp_path, format="kaggle", root="fer")
    with pytest.raises(ValueError, match=r"no options \['split'\]"):
        load(tmp_path, format="fer2013_folder", root="fer", split="train")
    with pytest.raises(FileNotFoundError, match="WSCFER_DATA"):
        load(tmp_path, format="fer2013_folder", root="absent")
    with pytest.raises(ValueError, match="no images"):
        load(tmp_path, format="folder", root="fer", class_map={"happy": None})


def test_absolute_roots_ignore_the_data_root(tmp_path):
    write_face(tmp_path / "fer" / "happy" / "a.png", "happy")
    dataset = load_dataset({"format": "fer2013_folder", "root": str(tmp_path / "fer")}, size=24,
                           color="gray", data_root=tmp_path / "elsewhere")
    assert label_names(dataset) == ["happy"]


def test_data_root_follows_wscfer_data(monkeypatch, tmp_path):
    monkeypatch.setenv("WSCFER_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("WSCFER_DATA")
    assert data_root() == Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ----------------------------------------------------------------------------- label noise

def test_flip_labels_flips_exactly_the_fraction_to_other_classes():
    labels = np.random.default_rng(1).integers(0, 7, size=1000)
    original = labels.copy()
    noisy, flipped = flip_labels(labels, 0.3, 7, seed=5)
    np.testing.assert_array_equal(labels, original)
    assert flipped.sum() == 300
    assert (noisy[flipped] != labels[flipped]).all()
    np.testing.assert_array_equal(noisy[~flipped], labels[~flipped])

    again, flipped_again = flip_labels(labels, 0.3, 7, seed=5)
    np.testing.assert_array_equal(again, noisy)
    np.testing.assert_array_equal(flipped_again, flipped)
    other, _ = flip_labels(labels, 0.3, 7, seed=6)
    assert (other != noisy).any()
    assert flip_labels(labels, 0.0, 7, seed=5)[1].sum() == 0
    assert flip_labels(labels[:5], 0.5, 7, seed=5)[1].sum() == round(2.5)


def test_flip_labels_draws_the_new_class_uniformly():
    # Every label is class 0, so the new classes should spread evenly over 1..4.
    labels = np.zeros(40000, np.int64)
    noisy, flipped = flip_labels(labels, 0.5, 5, seed=0)
    counts = np.bincount(noisy[flipped], minlength=5)
    assert counts[0] == 0
    expected = flipped.sum() / 4
    assert np.abs(counts[1:] - expected).max() < 4 * np.sqrt(expected)  # about 4 standard deviations


def test_flip_labels_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fraction"):
        flip_labels(np.zeros(4, np.int64), 1.5, 7, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        flip_labels(np.array([0, 3]), 0.5, 3, seed=0)


# ----------------------------------------------------------------------------- real data

def test_fer2013_validation_split_on_shared_data(fer2013_dir):
    dataset = load_dataset({"format": "fer2013_folder", "root": str(fer2013_dir / "val")},
                           size=48, color="gray", data_root=fer2013_dir)
    assert dataset.images.shape == (3589, 48, 48) and dataset.images.dtype == np.uint8
    assert dataset.class_names == list(FER2013_CLASSES)
    assert dict(zip(dataset.class_names, np.bincount(dataset.labels).tolist())) == {
        "angry": 467, "disgust": 56, "fear": 496, "happy": 895, "sad": 653, "surprise": 415, "neutral": 607}
    assert dataset.dropped == {}
    # Each file decodes to its own pixels, filed under its own folder's class.
    for name in ("disgust", "neutral"):
        first_file = min((fer2013_dir / "val" / name).iterdir())
        pixels = cv2.imread(str(first_file), cv2.IMREAD_GRAYSCALE)
        matches = (dataset.images == pixels).all(axis=(1, 2))
        assert {dataset.class_names[label] for label in dataset.labels[matches]} == {name}


def write_pack(path, images, labels, class_names, split="train"):
    """A packed dataset as scripts/pack_dataset.py writes it: JPEG bytes, offsets, labels, class names."""
    chunks = [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1] for image in images]
    offsets = np.concatenate([[0], np.cumsum([len(chunk) for chunk in chunks])]).astype(np.int64)
    np.savez(path, class_names=np.array(class_names), **{
        f"{split}_bytes": np.concatenate(chunks), f"{split}_offsets": offsets,
        f"{split}_labels": np.asarray(labels, np.int16)})


def test_packed_reader_round_trips_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = [np.full((48, 48), value, np.uint8) for value in (30, 120, 220)]
    images[1][:, :24] = rng.integers(0, 255, (48, 24))
    write_pack(tmp_path / "pack.npz", images, [2, 0, 1], ["angry", "fear", "happy"])
    dataset = load_dataset({"format": "packed", "root": str(tmp_path)}, size=48, color="gray", data_root=tmp_path)
    assert dataset.class_names == ["angry", "fear", "happy"]
    assert dataset.labels.tolist() == [2, 0, 1]
    assert abs(int(dataset.images[0].mean()) - 30) <= 2 and abs(int(dataset.images[2].mean()) - 220) <= 2
    resized = load_dataset({"format": "packed", "root": str(tmp_path)}, size=24, color="rgb", data_root=tmp_path)
    assert resized.images.shape == (3, 24, 24, 3)


def test_pack_dataset_packs_train_val_and_named_splits_that_read_back_as_packed(tmp_path, monkeypatch):
    """scripts/pack_dataset.py: a config's two splits and --split NAME=SPEC, each image with its label."""
    import importlib.util
    import yaml
    spec = importlib.util.spec_from_file_location("pack_dataset", Path(__file__).parents[1] / "scripts" /
                                                  "pack_dataset.py")
    pack_dataset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_dataset)
    folders = {}
    for split, names in (("train", ["angry", "happy", "sad"]), ("val", ["happy"]), ("extra", ["sad", "angry"])):
        for index, name in enumerate(names):
            write_face(tmp_path / split / name / f"{index}.png", name)
        folders[split] = {"format": "folder", "root": split,
                          "class_map": {name: name for name in ("angry", "happy", "sad")}}
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"train": folders["train"], "val": folders["val"], "size": 24}}))
    out = tmp_path / "pack" / "faces.npz"
    monkeypatch.setenv("WSCFER_DATA", str(tmp_path))
    assert pack_dataset.main(["--config", str(config), "--out", str(out), "--quality", "95",
                              "--split", "extra=" + json.dumps(folders["extra"])]) == 0
    for split, count in (("train", 3), ("val", 1), ("extra", 2)):
        packed = load_dataset({"format": "packed", "root": str(out.parent), "file": out.name, "split": split},
                              size=24, color="gray", data_root=tmp_path)
        assert len(packed.labels) == count
        for image, label in zip(packed.images, packed.labels):
            assert abs(int(image.mean()) - BRIGHTNESS[packed.class_names[label]]) <= 3


def test_packed_reader_names_a_missing_split(tmp_path):
    write_pack(tmp_path / "pack.npz", [np.zeros((8, 8), np.uint8)], [0], ["angry"])
    with pytest.raises(ValueError, match=r"no split 'val'.*\['train'\]"):
        load_dataset({"format": "packed", "root": str(tmp_path), "split": "val"}, size=8, color="gray",
                     data_root=tmp_path)


# ----------------------------------------------------------------------------- data.limit

def write_numbered_dataset(root: Path, fmt: str, count: int) -> dict:
    """``count`` flat gray faces, image i of brightness 10 + 12 i, so each image is recognisable; its spec."""
    values = [10 + 12 * index for index in range(count)]
    names = ["angry", "happy", "sad"]
    if fmt == "folder":
        for index, value in enumerate(values):
            path = root / "faces" / names[index % 3] / f"{index:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((24, 24), value, np.uint8))
        return {"format": "folder", "root": "faces", "class_map": {name: name for name in names}}
    if fmt == "fer2013_csv":
        write_csv(root / "fer" / "fer2013.csv", ["emotion", "pixels", "Usage"],
                  [[index % 7, " ".join([str(value)] * 48 * 48), "Training"] for index, value in enumerate(values)])
        return {"format": "fer2013_csv", "root": "fer"}
    write_pack(root / "pack.npz", [np.full((48, 48), value, np.uint8) for value in values],
               [index % 3 for index in range(count)], names)
    return {"format": "packed", "root": "."}


@pytest.mark.parametrize("fmt", ["folder", "fer2013_csv", "packed"])
def test_data_limit_decodes_only_the_images_it_keeps_and_keeps_the_same_ones(fmt, tmp_path, monkeypatch):
    spec = write_numbered_dataset(tmp_path, fmt, count=20)
    everything = load(tmp_path, **spec)
    decoded = []   # images decoded from their file bytes, or parsed from the CSV's pixel text
    decode, parse = wscfer_train.data.decode_bytes, np.fromstring
    monkeypatch.setattr(wscfer_train.data, "decode_bytes", lambda *args: decoded.append(1) or decode(*args))
    monkeypatch.setattr(np, "fromstring", lambda *args, **kw: decoded.append(1) or parse(*args, **kw))

    limited = load_dataset(spec, size=24, color="gray", data_root=tmp_path, subset=Subset(limit=5, seed=3))

    assert len(decoded) == 5
    # The five data.limit has always drawn (a seeded permutation of the listed images), in that order.
    rows = np.random.default_rng(3).permutation(20)[:5]
    np.testing.assert_array_equal(limited.images, everything.images[rows])
    assert limited.labels.tolist() == everything.labels[rows].tolist()
    assert limited.dropped == {"left out by data.limit": 15}


# ----------------------------------------------------------------------------- broken images
# Every reader decodes at load time and leaves a broken image out with a counted
# reason and one warning, so training never meets one mid-epoch.

def truncated_jpeg() -> bytes:
    """The first half of a JPEG of noise: the cut falls in the compressed pixels, past the headers."""
    image = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    encoded = cv2.imencode(".jpg", image)[1].tobytes()
    return encoded[:len(encoded) // 2]


BROKEN_BYTES = {"empty": b"", "random": np.random.default_rng(1).bytes(600), "truncated": truncated_jpeg()}
EXPECTED_REASONS = {"empty": "empty", "random": "undecodable", "truncated": "undecodable",
                    "folder": "cannot open", "missing": "missing file"}


@pytest.mark.parametrize("content, reason", [
    (b"\x89PNG\r\n\x1a\n" + np.random.default_rng(2).bytes(2000), "undecodable"),
    (announcing(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes(), 40000, 30000),
     "too large"),
])
def test_images_whose_headers_lie_are_left_out_before_decoding(content, reason):
    """OpenCV would allocate what these headers claim: seconds and gigabytes for each."""
    with pytest.raises(SkipImage, match=reason):
        decode_bytes(np.frombuffer(content, np.uint8), 24, "gray")


def write_broken_images(folder: Path, prefix: str = "") -> list[str]:
    """One broken image of each kind in ``folder`` (and one listed but absent); their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, content in BROKEN_BYTES.items():
        (folder / f"{prefix}{kind}.jpg").write_bytes(content)
    (folder / f"{prefix}folder.jpg").mkdir()   # named like an image, cannot be read as one
    return [f"{prefix}{kind}.jpg" for kind in EXPECTED_REASONS]


def class_folder_spec(root: Path, reader: str) -> dict:
    write_face(root / "faces" / "happy" / "good.png", "happy")
    write_broken_images(root / "faces" / "happy")
    spec = {"format": reader, "root": "faces"}
    return {**spec, "class_map": {"happy": "happy"}} if reader == "folder" else spec


def rafdb_spec(root: Path, reader: str) -> dict:
    images = root / "raf" / "Image" / "aligned"
    write_face(images / "train_good.jpg", "happy")
    names = ["train_good.jpg"] + write_broken_images(images, prefix="train_")
    (root / "raf" / "EmoLabel").mkdir(parents=True)
    (root / "raf" / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{name} 4\n" for name in names))
    return {"format": "rafdb", "root": "raf"}


def ferplus_spec(root: Path, reader: str) -> dict:
    write_face(root / "ferplus" / "FER2013Train" / "good.png", "happy")
    names = ["good.png"] + write_broken_images(root / "ferplus" / "FER2013Train")
    write_csv(root / "ferplus" / "fer2013new.csv", FERPLUS_HEADER,
              [["Training", name, *votes(happiness=10)] for name in names])
    return {"format": "ferplus", "root": "ferplus"}


def affectnet_spec(root: Path, reader: str) -> dict:
    write_face(root / "affectnet" / "Manually_Annotated_Images" / "1" / "good.png", "happy")
    names = ["good.png"] + write_broken_images(root / "affectnet" / "Manually_Annotated_Images" / "1")
    write_csv(root / "affectnet" / "training.csv", AFFECTNET_HEADER,
              [[f"1/{name}", 0, 0, 24, 24, "", 1, 0, 0] for name in names])
    return {"format": "affectnet", "root": "affectnet"}


FILE_READERS = {"fer2013_folder": class_folder_spec, "folder": class_folder_spec, "rafdb": rafdb_spec,
                "ferplus": ferplus_spec, "affectnet": affectnet_spec}


@pytest.mark.parametrize("reader", FILE_READERS)
def test_broken_image_files_are_left_out_counted_and_named(reader, tmp_path, caplog):
    spec = FILE_READERS[reader](tmp_path, reader)
    listed_only = reader != "fer2013_folder" and reader != "folder"   # a folder reader cannot list a missing file
    expected = Counter(reason for kind, reason in EXPECTED_REASONS.items() if listed_only or kind != "missing")

    with caplog.at_level(logging.WARNING, logger="wscfer_train.data"):
        dataset = load(tmp_path, **spec)
    assert label_names(dataset) == ["happy"]
    assert_images_show_their_labels(dataset)
    assert dataset.dropped == expected
    assert f"{sum(expected.values())} image(s) left out" in caplog.text
    assert "empty.jpg (empty)" in caplog.text and "folder.jpg (cannot open)" in caplog.text


# Loads a dataset in a process without the capabilities that let root read any file
# (the effective set is cleared with capset(2)), so file permissions count for
# root as for everyone else; prints the kept image count and the dropped counts.
LOAD_WITHOUT_PRIVILEGES = """
import ctypes, json, sys
from pathlib import Path
from wscfer_train.data import load_dataset

class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]

libc = ctypes.CDLL(None, use_errno=True)
header, data = Header(0x20080522, 0), (Data * 2)()   # _LINUX_CAPABILITY_VERSION_3
assert libc.capget(ctypes.byref(header), data) == 0
for half in data:
    half.effective = 0
assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
dataset = load_dataset({"format": "fer2013_folder", "root": "faces"}, size=24, color="gray",
                       data_root=Path(sys.argv[1]))
print(json.dumps([len(dataset), dataset.dropped]))
"""


def test_an_image_without_read_permission_is_left_out_as_cannot_open(tmp_path):
    write_face(tmp_path / "faces" / "happy" / "good.png", "happy")
    locked = write_face(tmp_path / "faces" / "happy" / "locked.png", "happy")
    locked.chmod(0)
    try:
        done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PRIVILEGES, str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o644)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [1, {"cannot open": 1}]


def test_packed_reader_leaves_out_broken_images_and_refuses_unknown_labels(tmp_path, caplog):
    good = cv2.imencode(".jpg", np.full((24, 24), BRIGHTNESS["happy"], np.uint8))[1]
    chunks = [good] + [np.frombuffer(content, np.uint8) for content in BROKEN_BYTES.values()]
    offsets = np.concatenate([[0], np.cumsum([len(chunk) for chunk in chunks])]).astype(np.int64)
    pack = {"class_names": np.array(["angry", "happy"]), "train_bytes": np.concatenate(chunks),
            "train_offsets": offsets, "train_labels": np.ones(len(chunks), np.int16)}
    np.savez(tmp_path / "pack.npz", **pack)
    with caplog.at_level(logging.WARNING, logger="wscfer_train.data"):
        dataset = load(tmp_path, format="packed", root=str(tmp_path))
    assert label_names(dataset) == ["happy"]
    assert dataset.dropped == {"empty": 1, "undecodable": 2}
    assert "3 image(s) left out" in caplog.text and "train image 1 (empty)" in caplog.text

    np.savez(tmp_path / "pack.npz", **{**pack, "train_labels": np.array([1, 2, -1, 1], np.int16)})
    with pytest.raises(ValueError, match=r"pack.npz: unknown class ids \[-1, 2\]; known ids: 0-1"):
        load(tmp_path, format="packed", root=str(tmp_path))
