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
    # What fits a 2-core CPU in about ten minutes per seed (all nine rows): a
    # quarter-width ResNet-18 on 6,000 training images for 3 epochs.
    "cpu": ["model.width=16", "data.limit=6000", "optim.epochs=3", "optim.batch_size=128", "train.threads=2"],
    # The paper's ResNet-18 on all of FER2013.
    "full": ["model.width=64", "optim.epochs=40", "optim.batch_size=256", "optim.lr=0.2"],
}


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


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="cpu")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--config", default=str(REPO / "config" / "train_fer2013.yaml"))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "ablation")
    parser.add_argument("--table", type=Path, help="markdown file for the table (default: <out>/<schedule>.md)")
    parser.add_argument("--rows", nargs="+", choices=[name for name, _, _ in ROWS], metavar="ROW",
                        help="run only these rows (default: all), e.g. to try a PCL setting: "
                             "--rows WSCFER --out runs/pcl_try loss.lambda_pcl=0.1")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides applied to every run")
    args = parser.parse_args(argv)
    schedule = SCHEDULES[args.schedule] + args.overrides
    rows = [row for row in ROWS if not args.rows or row[0] in args.rows]
    lines = [f"Schedule `{args.schedule}`: `{' '.join(schedule)}` on top of `{Path(args.config).name}`; "
             f"seeds 0..{args.seeds - 1}; FER2013 train -> PublicTest (val), mean ± std over seeds.", "",
             "| run | val accuracy (%) | mean per-class recall (%) |", "|---|---|---|"]
    for name, aux, noise in rows:
        results = [run_one(args.config, args.out / args.schedule / f"{aux}-noise{noise:g}-seed{seed}",
                           aux, noise, seed, schedule) for seed in range(args.seeds)]
        lines.append(f"| {name} | {mean_std([r['accuracy'] for r in results])} | "
                     f"{mean_std([r['mean_recall'] for r in results])} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    target = args.table or args.out / f"{args.schedule}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
