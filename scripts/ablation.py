"""Reproduce the WSCFER ablation table of ``../shared/docs/METHOD.md`` in one command.

    python scripts/ablation.py --schedule cpu            # short CPU schedule (stated in the table)
    python scripts/ablation.py --schedule full           # the full schedule, unchanged on a GPU

Same data, schedule, seed and augmentation in every row; only the auxiliary
loss changes.  Then baseline and WSCFER again with 20 % and 30 % of the
training labels flipped (validation stays clean).  Each (row, seed) is one
``wscfer-train`` run in ``--out``; finished runs are skipped and interrupted
ones resumed, so the command can be re-run until the table is complete.  The
table (mean and standard deviation over seeds of validation accuracy and
mean per-class recall) is printed and written to ``--table``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = [  # (name, loss.aux, label noise)
    ("baseline", "none", 0.0), ("+SimCLR", "simclr", 0.0), ("+SupCon", "supcon", 0.0),
    ("+WSC", "wsc", 0.0), ("WSCFER", "wscfer", 0.0),
    ("baseline, 20 % noise", "none", 0.2), ("WSCFER, 20 % noise", "wscfer", 0.2),
    ("baseline, 30 % noise", "none", 0.3), ("WSCFER, 30 % noise", "wscfer", 0.3),
]
SCHEDULES = {
    # What a 2-core CPU with bf16 runs in about a quarter of an hour per seed: the
    # shipped width-32 ResNet-18 on all of FER2013 for 15 epochs.
    "cpu": ["model.width=32", "optim.epochs=15", "optim.batch_size=128", "train.amp=auto", "train.threads=2"],
    # The paper's ResNet-18 on all of FER2013.
    "full": ["model.width=64", "optim.epochs=40", "optim.batch_size=256", "optim.lr=0.2"],
}
# Faces that are not FER2013's (whole heads, other cameras, noisy labels): the noisy rows are
# also scored on them, as crops, to see whether robustness to label noise carries over.
MUXSPACE = {"format": "folder", "root": "muxspace",
            "class_map": {**{name: name for name in ("angry", "disgust", "fear", "happy", "sad", "surprise",
                                                     "neutral")}, "_meta": None}}


def run_one(config: str, out: Path, aux: str, noise: float, seed: int, schedule: list[str]) -> dict:
    if (out / "best.json").exists():
        return json.loads((out / "best.json").read_text())
    settings = [f"run.seed={seed}", f"loss.aux={aux}", f"data.label_noise={noise}", f"data.noise_seed={seed}",
                *schedule]
    if list((out / "checkpoints").glob("ckpt-*.pt")):   # interrupted: continue it, its settings checked
        command = [sys.executable, "-m", "wscfer_train.trainer", "--resume", str(out), "--config", config, *settings]
    else:
        command = [sys.executable, "-m", "wscfer_train.trainer", "--config", config, f"run.out_dir={out}",
                   *settings]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads((out / "best.json").read_text())


def muxspace_metrics(out: Path) -> dict:
    """Accuracy and mean recall of the run's best.pt on muxspace crops (computed once, kept beside it)."""
    cached = out / "muxspace.json"
    if cached.exists():
        return json.loads(cached.read_text())
    from wscfer_train.data import data_root, load_dataset
    from wscfer_train.evaluate import evaluate, open_checkpoint

    model = open_checkpoint(out / "best.pt", "cpu")
    dataset = load_dataset(MUXSPACE, size=model.input_size[0], color=model.color, data_root=data_root())
    metrics = {key: evaluate(model, dataset)[key] for key in ("accuracy", "mean_recall")}
    cached.write_text(json.dumps(metrics))
    return metrics


def spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_std(values: list[float]) -> str:
    mean, std = spread(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="cpu")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--config", default=str(REPO / "config" / "train_fer2013.yaml"))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "ablation")
    parser.add_argument("--table", type=Path, help="markdown file for the table (default: <out>/<schedule>.md)")
    parser.add_argument("--json", type=Path, help="machine-readable rows (default: <out>/<schedule>.json)")
    parser.add_argument("--rows", nargs="+", choices=[name for name, _, _ in ROWS], metavar="ROW",
                        help="run only these rows (default: all), e.g. to try a PCL setting: "
                             "--rows WSCFER --out runs/pcl_try loss.lambda_pcl=0.1")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides applied to every run")
    args = parser.parse_args(argv)
    schedule = SCHEDULES[args.schedule] + args.overrides
    rows = [row for row in ROWS if not args.rows or row[0] in args.rows]
    lines = [f"Schedule `{args.schedule}`: `{' '.join(schedule)}` on top of `{Path(args.config).name}`; "
             f"seeds 0..{args.seeds - 1}; FER2013 train -> PublicTest (val), mean ± std over seeds; "
             "muxspace: the best epoch's network on its faces as crops (noisy rows).", "",
             "| run | val accuracy (%) | mean per-class recall (%) | muxspace accuracy (%) | muxspace recall (%) |",
             "|---|---|---|---|---|"]
    def run_dir(aux: str, noise: float, seed: int) -> Path:
        return args.out / args.schedule / f"{aux}-noise{noise:g}-seed{seed}"

    # Seed by seed, so that an interrupted table already has every row once.
    for seed in range(args.seeds):
        for _, aux, noise in rows:
            run_one(args.config, run_dir(aux, noise, seed), aux, noise, seed, schedule)
    records = []
    for name, aux, noise in rows:
        outs = [run_dir(aux, noise, seed) for seed in range(args.seeds)]
        results = [run_one(args.config, out, aux, noise, seed, schedule) for seed, out in enumerate(outs)]
        record = {"row": name, "noise": noise, "seeds": len(results)}
        for key, field in (("acc", "accuracy"), ("recall", "mean_recall")):
            record[f"{key}_mean"], record[f"{key}_std"] = spread([r[field] for r in results])
        cells = [mean_std([r["accuracy"] for r in results]), mean_std([r["mean_recall"] for r in results])]
        if noise > 0:
            cross = [muxspace_metrics(out) for out in outs]
            for key, field in (("acc", "accuracy"), ("recall", "mean_recall")):
                record[f"muxspace_{key}_mean"], record[f"muxspace_{key}_std"] = spread([c[field] for c in cross])
            cells += [mean_std([c["accuracy"] for c in cross]), mean_std([c["mean_recall"] for c in cross])]
        else:
            cells += ["", ""]
        records.append(record)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    target = args.table or args.out / f"{args.schedule}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(table)
    baseline = next((r["acc_mean"] for r in records if r["row"] == "baseline"), None)
    summary = {"schedule": {"name": args.schedule, "overrides": schedule, "config": Path(args.config).name,
                            "seeds": args.seeds},
               "baseline_acc": baseline, "rows": records}
    (args.json or args.out / f"{args.schedule}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
