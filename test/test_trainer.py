"""The trainer: a tiny model learns, resume is exact (also after kill -9), DDP gathers negatives across ranks."""
import csv
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml

from wscfer_train import distill
from wscfer_train.checkpoint import BEST_KEYS, ROLLING_KEYS, Checkpoints, atomic_save
from wscfer_train.config import DEFAULTS, ConfigError, as_yaml, flatten, load_config
from wscfer_train.evaluate import load_checkpoint
from wscfer_train.losses import objective
from wscfer_train.model import build_model, load_init
from wscfer_train.trainer import CSV_FIELDS, autocast_dtype, main, open_metrics_csv, train

CLASSES = ["angry", "happy", "sad"]
TINY_MODEL = {"arch": "resnet10", "width": 8, "stem": "imagenet", "pretrained": False, "proj_dim": 16, "init": None}


def write_folder_dataset(root, per_class=8, size=24, seed=0):
    """A folder-per-class dataset whose classes differ visibly (a bright band at a class position)."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 80, (size, size), dtype=np.uint8)
            image[:, index * size // 3:(index + 1) * size // 3] += 150
            cv2.imwrite(str(root / name / f"{i}.png"), image)
    return {"format": "folder", "root": str(root), "class_map": {name: name for name in CLASSES}}


def make_tiny_config(folder: Path) -> dict:
    """Two epochs of a tiny model on a tiny dataset, written under ``folder``; the run goes to ``folder/run``."""
    spec = write_folder_dataset(folder / "faces")
    cfg = load_config(None, [
        f"run.out_dir={folder / 'run'}", "data.size=24", "optim.batch_size=4", "optim.epochs=2",
        "optim.warmup_epochs=0.5", "train.threads=1", "train.eval_batch_size=8", "loss.aux=wscfer"])
    cfg["data"]["train"] = cfg["data"]["val"] = spec
    cfg["model"] = dict(TINY_MODEL)
    return cfg


@pytest.fixture
def tiny_config(tmp_path):
    return make_tiny_config(tmp_path)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[dict, dict]:
    """A tiny run trained start to end without interruption: its config and its final weights.

    Batches of 2 make 12 steps an epoch, with a checkpoint every 3 steps, so
    the tests that interrupt a copy of it can stop well inside an epoch.
    """
    cfg = make_tiny_config(tmp_path_factory.mktemp("reference"))
    cfg["optim"]["batch_size"] = 2
    cfg["train"]["checkpoint_steps"] = 3
    train(cfg)
    return cfg, final_weights(Path(cfg["run"]["out_dir"]))


@pytest.fixture(scope="module")
def long_reference_run(tmp_path_factory) -> tuple[dict, dict]:
    """The reference run over 6 epochs (72 steps): a signal sent at step 3 arrives well before the end."""
    cfg = make_tiny_config(tmp_path_factory.mktemp("long_reference"))
    cfg["optim"].update(batch_size=2, epochs=6)
    cfg["train"]["checkpoint_steps"] = 3
    train(cfg)
    return cfg, final_weights(Path(cfg["run"]["out_dir"]))


def copy_to(cfg: dict, out_dir: Path) -> dict:
    """The same training, writing its run to ``out_dir``."""
    copy = json.loads(json.dumps(cfg))
    copy["run"]["out_dir"] = str(out_dir)
    return copy


def final_weights(run: Path) -> dict:
    """The model of a run's newest checkpoint, loaded weights-only as --resume loads it."""
    return torch.load(Checkpoints(run / "checkpoints", 2).paths()[-1], weights_only=True)["model"]


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, num_classes=7, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(16, 1, 24, 24)
    y = torch.arange(16) % 7
    views, labels = torch.cat([x, x.flip(3)]), y.repeat(2)
    pair = (torch.arange(32) + 16) % 32
    cfg = {"aux": "wscfer", "tau": 0.1, "lambda_aux": 0.5, "lambda_pcl": 0.5}
    losses = []
    for _ in range(60):
        logits, u = model(views, with_embedding=True)
        loss, _ = objective(logits, u, labels, pair, torch.arange(32), cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy == 1.0


def test_training_run_writes_metrics_best_checkpoint_and_csv(tiny_config, tmp_path):
    given = json.loads(json.dumps(tiny_config))
    best = train(tiny_config)
    assert tiny_config == given, "train() leaves the caller's settings as they were"
    run = tmp_path / "run"
    assert 0.0 <= best["accuracy"] <= 1.0
    with open(run / "metrics.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert [row["epoch"] for row in rows] == ["1", "2"] and list(rows[0]) == CSV_FIELDS
    for row in rows:    # loss.aux wscfer: cross-entropy, the WSC term and PCL, no distillation
        assert all(float(row[key]) > 0 for key in ("loss", "cls", "aux", "pcl", "images_per_s")) and row["kd"] == ""
    saved = torch.load(run / "best.pt", weights_only=True)
    assert saved["config"]["data"]["mean"] is not None and saved["config"]["data"]["std"] is not None
    assert saved["meta"]["class_names"] == CLASSES and saved["meta"]["input_size"] == [24, 24]
    assert saved["meta"]["class_counts"] == [8, 8, 8]      # the prior wscfer-export --logit-adjustment uses
    assert len(list((run / "checkpoints").glob("ckpt-*.pt"))) == 2
    assert list((run / "tb").iterdir()), "TensorBoard events written"


def test_a_machine_without_tensorboard_trains_with_metrics_csv_alone(tiny_config, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)    # import raises ImportError
    tiny_config["optim"]["epochs"] = 1
    with caplog.at_level("INFO", logger="wscfer_train"):
        train(tiny_config)
    run = tmp_path / "run"
    assert (run / "best.json").exists() and len((run / "metrics.csv").read_text().splitlines()) == 2
    assert not (run / "tb").exists()
    assert "TensorBoard is not installed" in caplog.text


def test_resume_after_interruption_matches_uninterrupted_run(reference_run, tmp_path):
    cfg, uninterrupted = reference_run
    interrupted = copy_to(cfg, tmp_path / "run")
    interrupted["train"]["max_steps"] = 4           # stop mid-epoch 1 (12 steps per epoch), saving there
    train(interrupted)
    assert not (tmp_path / "run" / "best.json").exists(), "an interrupted run is not marked finished"
    interrupted["train"]["max_steps"] = 0
    train(interrupted, resume=True)
    assert_same_weights(final_weights(tmp_path / "run"), uninterrupted)


def test_kill_9_mid_epoch_then_resume_matches_uninterrupted_run(reference_run, tmp_path):
    """A real SIGKILL to a real wscfer-train process, once its first mid-epoch checkpoint is on disk."""
    cfg, uninterrupted = reference_run
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(copy_to(cfg, tmp_path / "run")))
    folder = tmp_path / "run" / "checkpoints"
    with open(tmp_path / "killed.log", "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "wscfer_train.trainer", "--config", str(config)],
                                   env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=output, stderr=output)
        deadline = time.monotonic() + 240
        while not list(folder.glob("ckpt-*.pt")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    written = Checkpoints(folder, 2).paths()
    assert written, "no checkpoint was on disk when the process was killed"
    assert torch.load(written[-1], weights_only=True)["step"] > 0, "killed in the middle of an epoch"
    assert not (tmp_path / "run" / "best.json").exists()

    assert main(["--resume", str(tmp_path / "run")]) == 0
    assert_same_weights(final_weights(tmp_path / "run"), uninterrupted)
    assert not list((tmp_path / "run").rglob("*.tmp")), "a save cut short by the kill leaves nothing behind"


def test_resume_falls_back_past_a_corrupt_newest_checkpoint_and_still_matches(reference_run, tmp_path, caplog):
    cfg, uninterrupted = reference_run
    interrupted = copy_to(cfg, tmp_path / "run")
    interrupted["train"]["max_steps"] = 7           # checkpoints after steps 6 and 7 are kept
    train(interrupted)
    folder = tmp_path / "run" / "checkpoints"
    newest = folder / "ckpt-000000007.pt"
    newest.write_bytes(newest.read_bytes()[:5000])
    interrupted["train"]["max_steps"] = 0
    with caplog.at_level("INFO", logger="wscfer_train"):
        train(interrupted, resume=True)
    assert f"checkpoint {newest} (5000 bytes) is unreadable" in caplog.text
    assert f"resuming from {folder / 'ckpt-000000006.pt'}" in caplog.text
    assert_same_weights(final_weights(tmp_path / "run"), uninterrupted)


def corrupt(path: Path, damage: str) -> None:
    """Damage a checkpoint file as a crash, a full disk or a bad copy might."""
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_resume_skips_a_corrupt_newest_checkpoint_and_names_it(damage, tmp_path, caplog):
    checkpoints = Checkpoints(tmp_path, keep=2)
    checkpoints.save({"global_step": 1, "epoch": 0, "step": 1, "value": "good"})
    newest = checkpoints.save({"global_step": 2, "epoch": 0, "step": 2, "value": torch.zeros(1000)})
    corrupt(newest, damage)
    with caplog.at_level("WARNING", logger="wscfer_train"):
        assert checkpoints.load_newest("cpu")[1]["value"] == "good"
    assert f"checkpoint {newest}" in caplog.text and "is unreadable, skipped" in caplog.text


def test_resume_with_only_corrupt_checkpoints_exits_1_with_a_clear_message(tiny_config, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    Checkpoints(folder, keep=2).save({"global_step": 3, "epoch": 0, "step": 3})
    corrupt(folder / "ckpt-000000003.pt", "truncated")
    (folder / "ckpt-000000006.pt").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(tiny_config))
    done = subprocess.run([sys.executable, "-m", "wscfer_train.trainer", "--resume", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3, done.stderr           # two warnings, one error: nothing else
    assert "ckpt-000000006.pt (4000 bytes) is unreadable, skipped: UnpicklingError" in lines[0]
    assert "ckpt-000000003.pt" in lines[1] and "is unreadable, skipped: RuntimeError" in lines[1]
    assert "ERROR --resume: none of the checkpoints in" in lines[2]
    assert "ckpt-000000003.pt, ckpt-000000006.pt" in lines[2]


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    checkpoints = Checkpoints(tmp_path, keep=2)
    checkpoints.save({"global_step": 3, "epoch": 0, "step": 3, "value": "good"})

    def crash_half_way(obj, stream):
        stream.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", crash_half_way)
        with pytest.raises(OSError, match="No space"):
            checkpoints.save({"global_step": 6, "epoch": 0, "step": 6, "value": "lost"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt-000000003.pt", "ckpt-000000006.pt.tmp"]
    assert checkpoints.load_newest("cpu")[1]["value"] == "good"
    checkpoints.save({"global_step": 9, "epoch": 0, "step": 9, "value": "next"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt-000000003.pt", "ckpt-000000009.pt"]


def test_every_file_the_trainer_writes_loads_weights_only(reference_run):
    run = Path(reference_run[0]["run"]["out_dir"])
    rolling = sorted((run / "checkpoints").iterdir())
    assert len(rolling) == 2
    for path, keys in [(run / "best.pt", BEST_KEYS)] + [(path, ROLLING_KEYS) for path in rolling]:
        state = torch.load(path, weights_only=True)    # no allow-list: plain tensors and Python values
        assert tuple(state) == keys, path
        assert load_checkpoint(path)[1]["class_names"] == CLASSES, "a rolling checkpoint reads as a best.pt"
    assert not list(run.rglob("*.tmp"))


def test_validation_classes_unlike_the_training_classes_are_refused_before_training(tiny_config, tmp_path):
    tiny_config["data"]["val"] = {**tiny_config["data"]["val"],
                                  "class_map": {"angry": "angry", "happy": "happy", "sad": None}}
    with pytest.raises(ValueError, match=r"validation set's classes \['angry', 'happy'\] differ"):
        train(tiny_config)
    assert not list((tmp_path / "run").rglob("*.pt"))


def test_atomic_save_leaves_no_partial_file(tmp_path):
    target = tmp_path / "best.pt"
    atomic_save({"a": torch.ones(3)}, target)
    assert torch.equal(torch.load(target)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_unknown_config_key_is_an_error():
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(None, ["optim.lrr=0.1"])


DDP_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
from wscfer_train.losses import objective
from wscfer_train.trainer import gather
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
n = 3                                            # images per rank, two views each
u = torch.nn.functional.normalize(torch.randn(world * 2 * n, 8), dim=1)
logits = torch.randn(world * 2 * n, 7)
labels = torch.tensor([0, 1, 2, 1, 2, 0]).repeat(world)  # every anchor has other-class samples
local = slice(rank * 2 * n, (rank + 1) * 2 * n)
u_local = u[local].clone().requires_grad_(True)
logits_local = logits[local].clone().requires_grad_(True)
idx = torch.arange(world * 2 * n)
pair = idx - idx % (2 * n) + (idx % (2 * n) + n) % (2 * n)
cfg = {"aux": "wscfer", "tau": 0.1, "lambda_aux": 0.5, "lambda_pcl": 0.5}
loss, _ = objective(gather(logits_local, world, True), gather(u_local, world, True),
                    gather(labels[local], world, False), pair, idx[local], cfg)
loss.backward()
grad = u_local.grad.clone()
dist.all_reduce(loss.detach_(), op=dist.ReduceOp.SUM)
torch.save({"loss": loss.item() / world, "grad": grad}, os.environ["OUT"] + f".{rank}")
# Leaving with the process group alive lets gloo's threads die in the interpreter's exit:
# std::terminate (SIGABRT) in about one run in three.
dist.destroy_process_group()
"""


def free_port() -> int:
    """A TCP port no other process listens on now: fixed ports collide when two suites run on one machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_processes_gather_negatives_across_ranks(tmp_path):
    """The mean of the per-rank losses equals the loss of one process that sees the global batch."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(script)], env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [torch.load(tmp_path / f"out.{rank}") for rank in range(2)]
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(12, 8), dim=1).requires_grad_(True)
    logits = torch.randn(12, 7)
    labels = torch.tensor([0, 1, 2, 1, 2, 0]).repeat(2)
    idx = torch.arange(12)
    pair = idx - idx % 6 + (idx % 6 + 3) % 6
    cfg = {"aux": "wscfer", "tau": 0.1, "lambda_aux": 0.5, "lambda_pcl": 0.5}
    loss, _ = objective(logits, u, labels, pair, idx, cfg)
    loss.backward()
    assert results[0]["loss"] == pytest.approx(loss.item(), rel=1e-5)
    # DDP averages gradients over ranks; each rank's local rows received the sum over all anchors.
    combined = torch.cat([results[0]["grad"], results[1]["grad"]]) / 2
    assert torch.allclose(combined, u.grad, atol=1e-6)


def test_torchrun_training_on_two_cpu_processes(tiny_config, tmp_path):
    config_path = tmp_path / "ddp.yaml"
    tiny_config["optim"]["epochs"] = 1
    tiny_config["run"]["out_dir"] = str(tmp_path / "ddp_run")
    config_path.write_text(yaml.safe_dump(tiny_config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), "-m", "wscfer_train.trainer", "--config", str(config_path)],
                          env=env, timeout=180, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((tmp_path / "ddp_run" / "run.json").read_text())
    assert run["world_size"] == 2
    assert (tmp_path / "ddp_run" / "best.pt").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "config").glob("train_*.yaml")),
                         ids=lambda p: p.name)
def test_every_training_config_is_valid(path, tmp_path):
    """Keys known, dataset formats and options accepted; only the data itself is missing here."""
    from wscfer_train.data import load_dataset
    cfg = load_config(path)
    for split in ("train", "val"):
        with pytest.raises(FileNotFoundError, match="WSCFER_DATA"):
            load_dataset(cfg["data"][split], size=cfg["data"]["size"], color=cfg["data"]["color"],
                         data_root=tmp_path)


def test_init_loads_matching_backbone_weights_and_reports_the_rest(tmp_path):
    """--init: prefixes stripped, a 3-channel stem summed for a gray model, the rest reported."""
    donor = build_model(TINY_MODEL, num_classes=1000, in_channels=3)
    state = {f"module.{name}": tensor for name, tensor in donor.backbone.state_dict().items()}
    del state["module.layer4.0.conv1.weight"]
    state["module.fc.weight"] = torch.zeros(1000, 64)
    path = tmp_path / "pretrained.pt"
    torch.save(state, path)

    model = build_model(TINY_MODEL, num_classes=7, in_channels=1)
    report = load_init(model, str(path))
    assert report["missing"] == ["layer4.0.conv1.weight"]
    assert report["unexpected"] == ["module.fc.weight"]
    assert report["mismatched"] == []
    assert torch.equal(model.backbone.layer1[0].conv1.weight, donor.backbone.layer1[0].conv1.weight)
    assert torch.allclose(model.backbone.conv1.weight, donor.backbone.conv1.weight.sum(1, keepdim=True))


def test_init_from_a_runs_best_checkpoint_keeps_its_heads_for_the_same_classes(tmp_path):
    """A warm restart from a best.pt starts from the whole network, classifier and projection included."""
    classes = ["angry", "happy", "sad"]
    donor = build_model(TINY_MODEL, num_classes=3, in_channels=1)
    path = tmp_path / "best.pt"
    torch.save({"model": donor.state_dict(), "meta": {"class_names": classes}, "config": {}}, path)

    model = build_model(TINY_MODEL, num_classes=3, in_channels=1)
    report = load_init(model, str(path), classes)
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == []
    faces = torch.randn(4, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(model.eval()(faces), donor.eval()(faces))

    fresh = build_model(TINY_MODEL, num_classes=3, in_channels=1)
    report = load_init(fresh, str(path), ["happy", "angry", "sad"])
    assert report["missing"] == [] and sorted(report["unexpected"]) == sorted(
        name for name in donor.state_dict() if not name.startswith("backbone."))
    assert not torch.equal(fresh.classifier.weight, donor.classifier.weight)


def test_a_class_map_naming_an_unknown_class_stops_the_cli_with_one_clear_error(tiny_config, tmp_path,
                                                                              caplog):
    tiny_config["data"]["train"] = {**tiny_config["data"]["train"],
                                    "class_map": {"angry": "angrry", "happy": "happy", "sad": "sad"}}
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config))

    assert main(["--config", str(config)]) == 1
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "unknown class names ['angrry']" in errors[0].getMessage()
    assert not list((tmp_path / "run").rglob("*.pt"))


def test_metrics_csv_keeps_one_row_per_epoch_across_a_resume(tmp_path):
    """Killed after epoch 3's row but before its checkpoint: the resumed run redoes epoch 3."""
    path = tmp_path / "metrics.csv"
    with open_metrics_csv(path, completed_epochs=0) as fresh:
        table = csv.DictWriter(fresh, CSV_FIELDS)
        table.writerows({"epoch": epoch, "step": 10 * epoch} for epoch in (1, 2, 3))

    with open_metrics_csv(path, completed_epochs=2) as resumed:
        csv.DictWriter(resumed, CSV_FIELDS).writerow({"epoch": 3, "step": 31})

    rows = list(csv.DictReader(path.open()))
    assert [(row["epoch"], row["step"]) for row in rows] == [("1", "10"), ("2", "20"), ("3", "31")]
    assert not list(tmp_path.glob("*.tmp"))


def test_distilling_a_teacher_trains_and_records_it_in_the_checkpoint(reference_run, tmp_path):
    cfg, _ = reference_run
    teacher = Path(cfg["run"]["out_dir"]) / "best.pt"
    student = copy_to(cfg, tmp_path / "student")
    student["loss"].update({"teachers": [str(teacher)], "distill_weight": 0.5})
    student["optim"]["epochs"] = 1

    train(student)

    rows = list(csv.DictReader((tmp_path / "student" / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["kd"]) > 0
    saved = torch.load(tmp_path / "student" / "best.pt", weights_only=True)
    assert saved["meta"]["teachers"] == [str(teacher)]


def test_cached_soft_targets_are_made_again_when_the_teacher_file_changes(tmp_path, monkeypatch):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"first weights")
    made = []
    monkeypatch.setattr(distill, "soft_targets", lambda *args, **kwargs: made.append(1) or torch.full((4, 7), 1 / 7))
    dataset = SimpleNamespace(labels=np.arange(4), images=np.zeros((4, 24, 24), np.uint8))
    loss_cfg = {"teachers": [str(teacher)], "distill_temperature": 4.0}

    def targets():
        return distill.cached_soft_targets(tmp_path / "soft_targets.pt", loss_cfg, dataset, torch.device("cpu"), 8)

    targets(), targets()
    assert len(made) == 1
    teacher.write_bytes(b"other weights, same path")
    targets()
    assert len(made) == 2


def test_a_teacher_that_is_neither_a_file_nor_a_peer_is_refused_before_data_is_read(tmp_path):
    with pytest.raises(distill.TeacherError, match="neither a file nor a peer"):
        distill.check_settings({"teachers": [str(tmp_path / "gone.pt")], "distill_weight": 0.5,
                                "distill_temperature": 4.0})


def test_a_teacher_trained_on_other_images_stops_the_cli_with_one_clear_error(reference_run, tmp_path, caplog):
    cfg, _ = reference_run
    student = make_tiny_config(tmp_path)
    student["data"]["size"] = 32                    # the teacher was trained at 24 px
    student["loss"]["teachers"] = [str(Path(cfg["run"]["out_dir"]) / "best.pt")]
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(student))

    assert main(["--config", str(config)]) == 1
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "was trained on" in errors[0].getMessage()
    assert "'input_size': [24, 24]" in errors[0].getMessage()
    assert not list((tmp_path / "run").rglob("*.pt"))


@pytest.mark.parametrize("setting, value", [("distill_weight", 1.5), ("distill_weight", -0.1),
                                            ("distill_temperature", 0.0)])
def test_distillation_settings_out_of_range_stop_the_cli_with_one_clear_error(reference_run, tmp_path, caplog,
                                                                              setting, value):
    cfg, _ = reference_run
    student = make_tiny_config(tmp_path)
    student["loss"].update({"teachers": [str(Path(cfg["run"]["out_dir"]) / "best.pt")], setting: value})
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(student))

    assert main(["--config", str(config)]) == 1
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and f"loss.{setting} must be" in errors[0].getMessage()


@pytest.mark.parametrize("amp, cpu_has_bf16, expected", [
    (True, True, torch.bfloat16), ("auto", True, torch.bfloat16), (True, False, None),
    ("bf16", False, torch.bfloat16), (False, True, None), ("off", True, None)])
def test_train_amp_autocasts_to_bf16_on_a_cpu_that_computes_it(monkeypatch, amp, cpu_has_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_has_bf16)
    assert autocast_dtype(amp, torch.device("cpu")) == expected


def test_an_unknown_train_amp_value_is_refused():
    with pytest.raises(ValueError, match="train.amp must be"):
        autocast_dtype("half", torch.device("cpu"))


@pytest.mark.parametrize("amp, recorded", [("bf16", "bfloat16"), (False, "float32")])
def test_the_checkpoint_records_the_precision_the_run_trained_in(tiny_config, amp, recorded):
    tiny_config["train"]["amp"] = amp
    tiny_config["optim"]["epochs"] = 1
    train(tiny_config)
    saved = torch.load(Path(tiny_config["run"]["out_dir"]) / "best.pt", weights_only=True)
    assert saved["meta"]["precision_trained"] == recorded


def test_a_pretrained_start_loads_the_published_weights_and_trains_in_their_normalisation(tiny_config):
    """face-api's feature extractor, folded to gray, with face-api's input scaling (x - mean) / 255."""
    from wscfer_train.backbones import fold_to_gray, faceapi_state
    from wscfer_train.registry import FetchError

    try:
        published = fold_to_gray(faceapi_state(3)[0]["blocks.0.conv0.weight"])
    except FetchError as error:
        pytest.skip(f"face-api weights unavailable: {error}")
    tiny_config["model"] = {**TINY_MODEL, "arch": "faceapi", "pretrained": True}
    tiny_config["optim"].update({"epochs": 1, "lr": 0.0, "weight_decay": 0.0})
    train(tiny_config)

    saved = torch.load(Path(tiny_config["run"]["out_dir"]) / "best.pt", weights_only=True)
    assert saved["meta"]["arch"] == "faceapi-pretrained"
    assert saved["meta"]["mean"] == pytest.approx([(122.782 + 117.001 + 104.298) / 3 / 255])
    assert saved["meta"]["std"] == pytest.approx([1.0])
    torch.testing.assert_close(saved["model"]["backbone.blocks.0.conv0.weight"], published)


# ---------------------------------------------------------------- stopping, resuming, --help

def start_cli(args: list[str], log_path: Path) -> subprocess.Popen:
    """``wscfer-train`` in its own process, as a user starts it; stdout and stderr go to ``log_path``."""
    output = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "wscfer_train.trainer", *args], stdout=output, stderr=output,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wscfer_train.trainer", *args], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_current_step_prints_the_resume_command_and_the_resumed_run_matches(
        long_reference_run, tmp_path, signum, status):
    cfg, uninterrupted = long_reference_run
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(copy_to(cfg, tmp_path / "run")))
    folder = tmp_path / "run" / "checkpoints"
    process = start_cli(["--config", str(config)], tmp_path / "stopped.log")
    deadline = time.monotonic() + 240
    while not list(folder.glob("ckpt-*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    on_disk = Checkpoints(folder, 2).paths()[-1]     # the step-3 checkpoint: the run is in its steps
    process.send_signal(signum)
    process.wait(timeout=120)
    output = (tmp_path / "stopped.log").read_text()
    assert process.returncode == status, output[-3000:]
    assert "Traceback" not in output
    stops = [line for line in output.splitlines() if "resume with:" in line]
    assert len(stops) == 1, output[-3000:]
    saved = Path(stops[0].split("saved ")[1].split(" (")[0])
    assert saved.parent == folder and saved.name > on_disk.name, "saved at the step the signal arrived"
    state = torch.load(saved, weights_only=True)
    assert f"epoch {state['epoch'] + 1}/6 with {state['step']} of its 12 steps done" in stops[0]
    assert not (tmp_path / "run" / "best.json").exists()

    command = shlex.split(stops[0].split("resume with: ")[1])
    assert command == [sys.executable, "-m", "wscfer_train.trainer", "--resume", str(tmp_path / "run")]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=240,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {saved}: epoch {state['epoch'] + 1}/6" in resumed.stderr
    assert_same_weights(final_weights(tmp_path / "run"), uninterrupted)


def interrupted_run(reference_run, tmp_path, max_steps: int) -> Path:
    """A copy of the reference run stopped by train.max_steps, through the CLI as a user would; its folder."""
    cfg, _ = reference_run
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(copy_to(cfg, tmp_path / "run")))
    assert main(["--config", str(config), f"train.max_steps={max_steps}"]) == 0
    return tmp_path / "run"


def test_resume_takes_the_runs_saved_settings_and_says_the_epoch_it_runs(reference_run, tmp_path, caplog):
    run = interrupted_run(reference_run, tmp_path, max_steps=16)   # epoch 1 done, 4 steps into epoch 2
    with caplog.at_level("INFO", logger="wscfer_train"):
        assert main(["--resume", str(run)]) == 0
    assert "ckpt-000000016.pt: epoch 2/2 with 4 of its 12 steps done" in caplog.text
    assert_same_weights(final_weights(run), reference_run[1])


def test_resume_refuses_a_changed_setting_unless_allowed(reference_run, tmp_path, caplog):
    run = interrupted_run(reference_run, tmp_path, max_steps=4)
    before = Checkpoints(run / "checkpoints", 2).paths()
    caplog.clear()

    assert main(["--resume", str(run), "optim.lr=0.5", "optim.epochs=2"]) == 1
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1
    assert "optim.lr is 0.1 in the run, 0.5 given" in errors[0] and "--allow-changes" in errors[0]
    assert "optim.epochs" not in errors[0], "a value given again that agrees is no difference"
    assert Checkpoints(run / "checkpoints", 2).paths() == before, "nothing trained"

    # The config file given again agrees; train.* may always change.
    config = tmp_path / "train.yaml"
    assert main(["--resume", str(run), "--config", str(config), "train.max_steps=2", "train.threads=1"]) == 0

    caplog.clear()
    with caplog.at_level("INFO", logger="wscfer_train"):
        assert main(["--resume", str(run), "--allow-changes", "optim.epochs=3"]) == 0
    assert "--allow-changes: optim.epochs 2 -> 3" in caplog.text
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 3
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["epochs"] == 3


@pytest.mark.parametrize("case", ["no folder", "no checkpoint yet"])
def test_resume_without_a_run_to_continue_is_one_error_line(tiny_config, tmp_path, case):
    if case == "no checkpoint yet":   # stopped before its first checkpoint: config.yaml only
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(tiny_config))
    done = run_cli("--resume", str(tmp_path / "run"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ERROR --resume" in lines[0], done.stderr
    assert ("no run there" if case == "no folder" else "start it again without --resume") in lines[0]


def test_a_new_run_never_overwrites_a_run_folder_with_checkpoints(reference_run, tmp_path, caplog):
    run = interrupted_run(reference_run, tmp_path, max_steps=4)
    before = {path: path.read_bytes() for path in Checkpoints(run / "checkpoints", 2).paths()}
    caplog.clear()
    assert main(["--config", str(tmp_path / "train.yaml")]) == 1
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and f"--resume {run}" in errors[0]
    assert {path: path.read_bytes() for path in Checkpoints(run / "checkpoints", 2).paths()} == before


@pytest.mark.parametrize("args, message", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
    (["optim.lr"], "not of the form key=value"),
    (["data.size=[48"], "is not YAML"),
])
def test_a_bad_setting_is_one_error_line_before_any_data_is_read(tiny_config, tmp_path, args, message):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    done = run_cli("--config", str(config), *args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


def test_help_lists_every_setting_with_its_default_as_text():
    done = run_cli("--help")
    assert done.returncode == 0
    for key, value in flatten(DEFAULTS).items():
        assert f"    {key} = {as_yaml(value)}\n" in done.stdout, key
    assert "    data.limit = 0\n" in done.stdout and "    optim.epochs = 30\n" in done.stdout
    assert "    augment.rotation = 10.0\n" in done.stdout
    assert "``" not in done.stdout and "DEFAULTS" not in done.stdout and "state_dict" not in done.stdout


@pytest.mark.parametrize("override, named", [("augment.rotaton=45", "augment.rotaton"), ("optim.lrr=1", "optim.lrr"),
                                             ("model.arch=resnet99", "model.arch"), ("loss.aux=foo", "loss.aux"),
                                             ("optim.epochs=0", "optim.epochs"),
                                             ("loss.pcl_warmup_epochs=-1", "loss.pcl_warmup_epochs")])
def test_a_bad_key_or_value_ends_the_run_with_one_line_before_any_data_is_read(tmp_path, caplog, override, named):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"train": {"format": "none", "root": "missing"}}}))
    assert main(["--config", str(config), f"run.out_dir={tmp_path / 'run'}", override]) == 1
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and named in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "run").exists()
