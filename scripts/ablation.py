"""Reproduce the WSCFER ablation table of ``../shared/docs/METHOD.md`` in one command.

    python scripts/ablation.py --schedule cpu            # short CPU schedule (stated in the table)
    python scripts/ablation.py --schedule full           # the full schedule, unchanged on a GPU

Same data, schedule, seed and augmentation in every row; only the auxiliary
loss changes.  Then baseline and WSCFER again with 20 % and 30 % of the
training labels flipped (validation stays clean), and +WSC, the shipped files'
loss, with 30 %.  Each (row, seed) is one ``wscfer-train`` run in ``--out``.
Every finished run is recorded in the ``--json`` file with its settings and
its best epoch's metrics (FER2013 PublicTest, and muxspace's faces as crops);
runs found there or finished in ``--out`` are not trained again and
interrupted ones are resumed, so the command can be re-run, on another machine
too, until the table is complete.
The table (mean and standard deviation over seeds of accuracy and mean
per-class recall) is rewritten after every run: to ``--table`` as markdown and
to ``--json`` as rows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ROWS = [  # (name, loss.aux, label noise)
    ("baseline", "none", 0.0), ("+SimCLR", "simclr", 0.0), ("+SupCon", "supcon", 0.0),
    ("+WSC", "wsc", 0.0), ("WSCFER", "wscfer", 0.0),
    ("baseline, 20 % noise", "none", 0.2), ("WSCFER, 20 % noise", "wscfer", 0.2),
    ("baseline, 30 % noise", "none", 0.3), ("WSCFER, 30 % noise", "wscfer", 0.3),
    ("+WSC, 30 % noise", "wsc", 0.3),
]
SCHEDULES = {
    # What a 2-core CPU with bf16 runs in about a quarter of an hour per seed: the
    # shipped width-32 ResNet-18 on all of FER2013 for 15 epochs.
    "cpu": ["model.width=32", "optim.epochs=15", "optim.batch_size=128", "train.amp=auto", "train.threads=2"],
    # The paper's ResNet-18 on all of FER2013.
    "full": ["model.width=64", "optim.epochs=40", "optim.batch_size=256", "optim.lr=0.2"],
}
# Faces that are not FER2013's (whole heads, other cameras, noisy labels): every run is also
# scored on them, as crops, to see whether what a loss learns (and its robustness to label
# noise) carries over to other faces.
MUXSPACE = {"format": "folder", "root": "muxspace",
            "class_map": {**{name: name for name in ("angry", "disgust", "fear", "happy", "sad", "surprise",
                                                     "neutral")}, "_meta": None}}


def train_run(config: str, out: Path, settings: list[str]) -> dict:
    """Train (or finish) one run in ``out`` and return its ``best.json``."""
    if not (out / "best.json").exists():
        if list((out / "checkpoints").glob("ckpt-*.pt")):   # interrupted: continue it, its settings checked
            command = [sys.executable, "-m", "wscfer_train.trainer", "--resume", str(out), "--config", config,
                       *settings]
        else:
            command = [sys.executable, "-m", "wscfer_train.trainer", "--config", config, f"run.out_dir={out}",
                       *settings]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, cwd=REPO)
    return json.loads((out / "best.json").read_text())


def muxspace_metrics(out: Path, spec: dict) -> dict:
    """Accuracy and mean recall of the run's best.pt on muxspace's faces (``spec``) as crops."""
    from wscfer_train.data import data_root, load_dataset
    from wscfer_train.evaluate import evaluate, open_checkpoint

    model = open_checkpoint(out / "best.pt", "cpu")
    dataset = load_dataset(spec, size=model.input_size[0], color=model.color, data_root=data_root())
    metrics = evaluate(model, dataset)
    return {key: metrics[key] for key in ("accuracy", "mean_recall")}


def spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value: a single seed has no spread)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def mean_std(values: list[float]) -> str:
    mean, std = spread(values)
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def summarise(runs: list[dict], rows: list[tuple], schedule: dict) -> tuple[dict, str]:
    """The table as JSON rows and as markdown, from the finished runs (rows with none are left out)."""
    lines = [f"Schedule `{schedule['name']}`: `{' '.join(schedule['overrides'])}` on top of "
             f"`{schedule['config']}`; seeds 0..{schedule['seeds'] - 1}; FER2013 train -> PublicTest (val), "
             "mean ± std over the seeds finished (column `seeds`); muxspace: the best epoch's network on its "
             "faces as crops.", "",
             "| run | seeds | val accuracy (%) | mean per-class recall (%) | muxspace accuracy (%) "
             "| muxspace recall (%) |",
             "|---|---|---|---|---|---|"]
    records = []
    for name, aux, noise in rows:
        done = sorted((run for run in runs if run["aux"] == aux and run["noise"] == noise),
                      key=lambda run: run["seed"])
        if not done:
            continue
        record = {"row": name, "noise": noise, "seeds": len(done)}
        cells = []
        for prefix, source in (("", "val"), ("muxspace_", "muxspace")):
            for key, field in (("acc", "accuracy"), ("recall", "mean_recall")):
                values = [run[source][field] for run in done]
                record[f"{prefix}{key}_mean"], record[f"{prefix}{key}_std"] = spread(values)
                cells.append(mean_std(values))
        records.append(record)
        lines.append(f"| {name} | {len(done)} | " + " | ".join(cells) + " |")
    baseline = next((r["acc_mean"] for r in records if r["row"] == "baseline"), None)
    summary = {"schedule": schedule, "baseline_acc": baseline, "rows": records,
               "runs": sorted(runs, key=lambda run: (run["seed"], run["run"]))}
    return summary, "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="cpu")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--config", default=str(REPO / "config" / "train_fer2013.yaml"))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "ablation")
    parser.add_argument("--table", type=Path, help="markdown file for the table (default: <out>/<schedule>.md)")
    parser.add_argument("--json", type=Path, help="the finished runs and the table's rows; runs recorded here "
                                                  "are not trained again (default: <out>/<schedule>.json)")
    parser.add_argument("--rows", nargs="+", choices=[name for name, _, _ in ROWS], metavar="ROW",
                        help="run only these rows (default: all), e.g. to try a PCL setting: "
                             "--rows WSCFER --out runs/pcl_try loss.lambda_pcl=0.1")
    parser.add_argument("--muxspace", type=yaml.safe_load, default=MUXSPACE, metavar="SPEC",
                        help="where muxspace's faces are, as a dataset spec in YAML (default: the folder under "
                             "WSCFER_DATA), e.g. a packed copy: '{format: packed, root: ., file: pack.npz, "
                             "split: muxspace}'")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write the table of the runs recorded so far")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides applied to every run")
    args = parser.parse_args(argv)
    schedule = {"name": args.schedule, "overrides": SCHEDULES[args.schedule] + args.overrides,
                "config": Path(args.config).name, "seeds": args.seeds}
    rows = [row for row in ROWS if not args.rows or row[0] in args.rows]
    json_path = args.json or args.out / f"{args.schedule}.json"
    table_path = args.table or args.out / f"{args.schedule}.md"

    runs = []
    if json_path.exists():
        recorded = json.loads(json_path.read_text())
        same = {key: recorded["schedule"][key] for key in ("name", "overrides", "config")}
        if same != {key: schedule[key] for key in same}:
            print(f"error: {json_path} holds runs of another schedule ({' '.join(same['overrides'])}); "
                  "give another --json", file=sys.stderr)
            return 1
        runs = recorded["runs"]

    # Seed by seed, so that an interrupted table already has every row once.
    for seed in range(0 if args.report else args.seeds):
        for _, aux, noise in rows:
            name = f"{aux}-noise{noise:g}-seed{seed}"
            if any(run["run"] == name for run in runs):
                continue
            out = args.out / args.schedule / name
            settings = [f"run.seed={seed}", f"loss.aux={aux}", f"data.label_noise={noise}",
                        f"data.noise_seed={seed}", *schedule["overrides"]]
            best = train_run(args.config, out, settings)
            runs.append({"run": name, "aux": aux, "noise": noise, "seed": seed,
                         "val": {"accuracy": best["accuracy"], "mean_recall": best["mean_recall"],
                                 "epoch": best["epoch"]},
                         "muxspace": muxspace_metrics(out, args.muxspace)})
            summary, table = summarise(runs, rows, schedule)
            write_atomically(json_path, json.dumps(summary, indent=2) + "\n")
            write_atomically(table_path, table)
            print(table.splitlines()[-1] if summary["rows"] else "", flush=True)
    summary, table = summarise(runs, rows, schedule)
    write_atomically(json_path, json.dumps(summary, indent=2) + "\n")
    write_atomically(table_path, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
