"""scripts/ablation.py: finished runs recorded in its JSON are not trained again, the table follows them."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation", REPO_ROOT / "scripts" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recorded_run(aux, noise, seed, accuracy):
    return {"run": f"{aux}-noise{noise:g}-seed{seed}", "aux": aux, "noise": noise, "seed": seed,
            "val": {"accuracy": accuracy, "mean_recall": accuracy - 0.1, "epoch": 15},
            "muxspace": {"accuracy": accuracy - 0.2, "mean_recall": accuracy - 0.3}}


def write_record(path, ablation, runs, schedule="cpu", overrides=()):
    schedule = {"name": schedule, "overrides": ablation.SCHEDULES[schedule] + list(overrides),
                "config": "train_fer2013.yaml", "seeds": 2}
    path.write_text(json.dumps({"schedule": schedule, "runs": runs}))


def test_recorded_runs_are_not_trained_again_and_make_the_table(ablation, tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(ablation, "train_run", lambda config, out, settings: trained.append(out))
    record = tmp_path / "ablation.json"
    write_record(record, ablation, [recorded_run("none", 0.0, 0, 0.60), recorded_run("none", 0.0, 1, 0.62),
                                    recorded_run("wscfer", 0.0, 0, 0.64), recorded_run("wscfer", 0.0, 1, 0.66)])
    table = tmp_path / "table.md"

    assert ablation.main(["--rows", "baseline", "WSCFER", "--json", str(record), "--table", str(table),
                          "--out", str(tmp_path / "runs")]) == 0

    assert trained == []
    summary = json.loads(record.read_text())
    assert summary["baseline_acc"] == pytest.approx(0.61)
    baseline, wscfer = summary["rows"]
    assert (baseline["row"], baseline["seeds"]) == ("baseline", 2)
    assert wscfer["acc_mean"] == pytest.approx(0.65)
    assert wscfer["acc_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert wscfer["muxspace_recall_mean"] == pytest.approx(0.35)
    assert "| WSCFER | 2 | 65.00 ± 1.41 |" in table.read_text()


def test_a_missing_run_is_trained_and_recorded_with_its_muxspace_score(ablation, tmp_path, monkeypatch):
    trained = []

    def train_run(config, out, settings):
        trained.append((out.name, settings))
        return {"accuracy": 0.5, "mean_recall": 0.4, "epoch": 3}

    monkeypatch.setattr(ablation, "train_run", train_run)
    monkeypatch.setattr(ablation, "muxspace_metrics", lambda out, spec: {"accuracy": 0.3, "mean_recall": 0.2})
    record = tmp_path / "ablation.json"
    write_record(record, ablation, [recorded_run("none", 0.2, 0, 0.55)])

    assert ablation.main(["--rows", "baseline, 20 % noise", "--json", str(record), "--table",
                          str(tmp_path / "table.md"), "--out", str(tmp_path / "runs")]) == 0

    name, settings = trained[0]
    assert len(trained) == 1 and name == "none-noise0.2-seed1"
    assert {"run.seed=1", "loss.aux=none", "data.label_noise=0.2", "data.noise_seed=1"} <= set(settings)
    runs = json.loads(record.read_text())["runs"]
    assert [run["run"] for run in runs] == ["none-noise0.2-seed0", "none-noise0.2-seed1"]
    assert runs[1]["muxspace"] == {"accuracy": 0.3, "mean_recall": 0.2}


def test_report_trains_nothing_and_tables_what_is_recorded(ablation, tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "train_run", lambda *args: pytest.fail("--report trained"))
    record, table = tmp_path / "ablation.json", tmp_path / "table.md"
    write_record(record, ablation, [recorded_run("none", 0.0, 0, 0.60), recorded_run("none", 0.0, 1, 0.62)])

    assert ablation.main(["--report", "--json", str(record), "--table", str(table),
                          "--out", str(tmp_path / "runs")]) == 0

    assert [row["row"] for row in json.loads(record.read_text())["rows"]] == ["baseline"]
    assert "| baseline | 2 | 61.00 ± 1.41 |" in table.read_text()


def test_a_row_with_one_seed_has_no_spread(ablation, tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "train_run", lambda *args: pytest.fail("the run is recorded"))
    record, table = tmp_path / "ablation.json", tmp_path / "table.md"
    write_record(record, ablation, [recorded_run("none", 0.0, 0, 0.60)])

    assert ablation.main(["--rows", "baseline", "--seeds", "1", "--json", str(record), "--table", str(table),
                          "--out", str(tmp_path / "runs")]) == 0

    (row,) = json.loads(record.read_text())["rows"]
    assert row["seeds"] == 1 and row["acc_std"] is None and row["acc_mean"] == pytest.approx(0.6)
    assert "| baseline | 1 | 60.00 | 50.00 |" in table.read_text()


def test_a_record_of_another_schedule_is_refused_with_one_line(ablation, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ablation, "train_run", lambda *args: pytest.fail("trained despite the refusal"))
    record = tmp_path / "ablation.json"
    write_record(record, ablation, [recorded_run("none", 0.0, 0, 0.6)], overrides=["optim.epochs=3"])

    assert ablation.main(["--json", str(record), "--out", str(tmp_path / "runs")]) == 1

    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "another schedule" in error
