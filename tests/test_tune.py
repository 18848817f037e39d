"""`sentiment-nb tune` across processes: a real Optuna search of stage 02 on a tiny slice (trials scored on
validation), its trials table and figure in the report, and a best-parameters file that `sentiment-nb run -f` accepts."""
import csv, json

import pytest
import yaml

from conftest import run_cli

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

SPACE = "{learning_rate: {low: 1.0e-5, high: 3.0e-4, log: true}, n_epochs: [1, 2]}"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    base = tmp_path_factory.mktemp("tune")
    proc = run_cli("tune", "-f", "params/tiny.yaml", "--trials", 3, "-p", "tune_space", SPACE, "--run-id", "tuned",
                   "--reports-dir", base / "reports", "-p", "processed_dir", base / "processed", timeout=880)
    return {"proc": proc, "run_dir": base / "reports" / "tuned", "base": base}


def test_tune_runs_the_trials_and_writes_a_runnable_best_params_file(tuned):
    proc, run_dir = tuned["proc"], tuned["run_dir"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    tune = run_dir / "tune"
    with open(tune / "trials.csv") as f: rows = list(csv.DictReader(f))
    search = json.loads((tune / "search.json").read_text())
    score = f"validation_{search['metric']}"                # tiny.yaml picks by macro F1, 02's default
    assert search["metric"] == "macro_f1" and search["trials"] == 3
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} <= {"complete", "pruned"} and any(r["state"] == "complete" for r in rows)
    for r in rows:                                     # every trial drew from the space, and was scored on validation
        assert 1e-5 <= float(r["learning_rate"]) <= 3e-4 and r["n_epochs"] in ("1", "2")
        assert 0 <= float(r[score]) <= 1
    assert not (tune / "trials").exists(), "trial checkpoints were left behind"
    best = yaml.safe_load((tune / "best_params.yaml").read_text())
    done = [r for r in rows if r["state"] == "complete"]
    top = rows[search["best_trial"]]                     # Optuna's best: the highest validation score of a completed trial
    assert top["state"] == "complete" and float(top[score]) == max(float(r[score]) for r in done)
    assert best["tune_trials"] == 0 and best["n_epochs"] == int(top["n_epochs"])
    assert best["learning_rate"] == pytest.approx(float(top["learning_rate"]))
    assert best["max_train_rows"] == 64 and best["dataset"] == "rotten_tomatoes"   # the run's own parameters, kept
    assert "best_params.yaml" in proc.stdout
    # the model of the run is trained with the best values
    summary = json.loads((run_dir / "model" / "training_summary.json").read_text())
    assert summary["params"]["learning_rate"] == pytest.approx(best["learning_rate"])
    assert summary["params"]["n_epochs"] == best["n_epochs"]
    page, index = (run_dir / "02_training.html").read_text(), (run_dir / "index.html").read_text()
    assert "hyperparameter trials (best: trial" in page                      # the trials table on the 02 page
    assert "best parameters file" in index and "hyperparameter trials" in index and "tune_trials" in index
    # the file is a parameters file the runner accepts: check it without running (stage 00 alone, on its own data)
    again = run_cli("run", "-f", tune / "best_params.yaml", "--stages", "00", "--run-id", "again",
                    "--reports-dir", tuned["base"] / "reports", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.parametrize("args, message", [
    (("--trials", 0), "tune needs a number of trials >= 1"),
    (("--trials", 2, "-p", "tune_space", "{pooling: [cls, mean]}"), "'pooling' cannot be searched"),
    (("--trials", 2, "-p", "tune_space", "{learning_rate: {low: 0.1, high: 0.01}}"), "low 0.1 must be below high 0.01"),
])
def test_tune_refuses_a_bad_search_before_training(tmp_path, args, message):
    proc = run_cli("tune", "-f", "params/tiny.yaml", *args, "--run-id", "bad", "--reports-dir", tmp_path / "reports",
                   "-p", "processed_dir", tmp_path / "processed", timeout=300)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "reports" / "bad" / "model").exists()
