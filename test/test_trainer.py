"""The trainer: a tiny model learns, resume is exact, DDP gathers negatives across ranks."""
import json
import os
from pathlib import Path
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from wscfer_train.config import load_config
from wscfer_train.losses import objective
from wscfer_train.model import build_model, load_init
from wscfer_train.trainer import Checkpoints, atomic_save, train

CLASSES = ["angry", "happy", "sad"]
TINY_MODEL = {"arch": "resnet10", "width": 8, "stem": "imagenet", "proj_dim": 16, "init": None}


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


@pytest.fixture
def tiny_config(tmp_path):
    spec = write_folder_dataset(tmp_path / "faces")
    cfg = load_config(None, [
        f"run.out_dir={tmp_path / 'run'}", "data.size=24", "optim.batch_size=4", "optim.epochs=2",
        "optim.warmup_epochs=0.5", "train.threads=1", "train.eval_batch_size=8", "loss.aux=wscfer"])
    cfg["data"]["train"] = cfg["data"]["val"] = spec
    cfg["model"] = dict(TINY_MODEL)
    return cfg


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
    best = train(tiny_config)
    run = tmp_path / "run"
    assert 0.0 <= best["accuracy"] <= 1.0
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 and rows[0].startswith("epoch,step,lr,loss")
    saved = torch.load(run / "best.pt", weights_only=False)
    assert saved["meta"]["class_names"] == CLASSES and saved["meta"]["input_size"] == [24, 24]
    assert len(list((run / "checkpoints").glob("ckpt-*.pt"))) == 2
    assert list((run / "tb").iterdir()), "TensorBoard events written"


def test_resume_after_interruption_matches_uninterrupted_run(tiny_config, tmp_path):
    train(tiny_config)
    uninterrupted = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["model"]
    final_uninterrupted = torch.load(Checkpoints(tmp_path / "run" / "checkpoints", 2).paths()[-1],
                                     weights_only=False)["model"]

    interrupted = json.loads(json.dumps(tiny_config))
    interrupted["run"]["out_dir"] = str(tmp_path / "run2")
    interrupted["train"]["max_steps"] = 3           # stop mid-epoch 1 (6 steps per epoch)
    train(interrupted)
    assert not (tmp_path / "run2" / "best.json").exists(), "an interrupted run is not marked finished"
    interrupted["train"]["max_steps"] = 0
    train(interrupted, resume=True)
    final_resumed = torch.load(Checkpoints(tmp_path / "run2" / "checkpoints", 2).paths()[-1],
                               weights_only=False)["model"]
    for name, tensor in final_uninterrupted.items():
        assert torch.equal(tensor, final_resumed[name]), name
    assert uninterrupted.keys() == final_resumed.keys()


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path):
    checkpoints = Checkpoints(tmp_path, keep=2)
    checkpoints.save({"global_step": 1, "epoch": 0, "step": 1, "value": "good"})
    (tmp_path / "ckpt-000000002.pt").write_bytes(b"truncated")
    assert checkpoints.load_newest("cpu")["value"] == "good"


def test_atomic_save_leaves_no_partial_file(tmp_path):
    target = tmp_path / "best.pt"
    atomic_save({"a": torch.ones(3)}, target)
    assert torch.equal(torch.load(target)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_unknown_config_key_is_an_error():
    with pytest.raises(KeyError, match="optim.lrr"):
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
"""


def test_two_gloo_processes_gather_negatives_across_ranks(tmp_path):
    """The mean of the per-rank losses equals the loss of one process that sees the global batch."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", "29517", str(script)], check=True, env=env, timeout=120,
                   capture_output=True)
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
    import yaml
    config_path.write_text(yaml.safe_dump(tiny_config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29518", "-m", "wscfer_train.trainer", "--config", str(config_path)],
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
