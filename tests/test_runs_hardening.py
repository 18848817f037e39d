"Runs that cannot corrupt each other or escape reports/, and parameters refused or converted before any stage starts."
import dataclasses, json, subprocess, time
from pathlib import Path

from conftest import BIN, ROOT, run_cli


def test_run_id_that_is_not_a_plain_name_is_refused(tmp_path):
    reports = tmp_path / "a" / "reports"
    for args in (["--run-id", "../../somewhere", "--stages", "00"], ["--resume", "../x"]):
        proc = run_cli("run", "-f", "params/tiny.yaml", *args, "--reports-dir", reports)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "is not a plain name" in proc.stderr and "letters, digits" in proc.stderr
    assert not (tmp_path / "somewhere").exists() and not reports.exists(), "a refused run wrote a folder"


def test_empty_stage_selection_is_refused(tmp_path):
    proc = run_cli("run", "-f", "params/tiny.yaml", "--stages", ",", "--reports-dir", tmp_path / "reports")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--stages ',' names no stage" in proc.stderr
    assert not (tmp_path / "reports").exists()


def test_wrong_parameter_types_are_refused_before_any_stage(tmp_path):
    (tmp_path / "p.yaml").write_text("dataset: rotten_tomatoes\nclass_names: negative\nbatch_size: \"32\"\n"
                                     "seed: 1000.0\ntest_size: \"0.2\"\n")
    proc = run_cli("run", "-f", tmp_path / "p.yaml", "-p", "max_train_samples", "1.5", "-p", "dataset", "yes",
                   "-p", "learning_rate", "fast", "--reports-dir", tmp_path / "reports")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert "parameter 'class_names' is 'negative' (str), expected list" in err
    assert "parameter 'max_train_samples' is 1.5 (float), expected int; it is not a whole number" in err
    assert "parameter 'dataset' is True (bool), expected str; YAML reads yes/no" in err
    assert "parameter 'learning_rate' is 'fast' (str), expected float" in err
    assert "batch_size" not in err and "seed" not in err and "test_size" not in err, "a lossless value was refused"
    assert not (tmp_path / "reports").exists(), "a run folder was made for a run that never started"


def test_parameters_are_converted_to_their_declared_types():
    from sentiment_nb.pipeline import load_params, prepare_parameters, stage_notebooks
    overrides = [("learning_rate", "3e-5"), ("seed", "1000.0"), ("n_epochs", '"1"'), ("test_size", '"0.2"'),
                 ("batch_size", '"32"'), ("class_weights", "[1, 2]"), ("push_model_s3.enabled", '"false"')]
    params, per_stage, _ = prepare_parameters(stage_notebooks(), load_params("params/tiny.yaml"), overrides)
    got = {k: params[k] for k in ("learning_rate", "seed", "n_epochs", "test_size", "batch_size", "class_weights")}
    assert got == {"learning_rate": 3e-5, "seed": 1000, "n_epochs": 1.0, "test_size": 0.2, "batch_size": 32,
                   "class_weights": [1.0, 2.0]}
    assert [type(v) for v in got.values()] == [float, int, float, float, int, list]
    assert per_stage["02_training"]["seed"] == 1000 and per_stage["01_preprocessing"]["test_size"] == 0.2
    assert params["push_model_s3"] == {"enabled": False}


def test_training_params_declare_what_the_notebook_declares():
    "One declaration per parameter: the 02 dataclass and its parameters cell agree on names, types and defaults."
    from sentiment_nb.pipeline import notebook_parameters, type_from_name
    from sentiment_nb.train import TrainingParams
    cell = notebook_parameters(ROOT / "nbs" / "02_training.ipynb")
    fields = {f.name: (type_from_name(f.type), f.default if f.default is not dataclasses.MISSING else f.default_factory())
              for f in dataclasses.fields(TrainingParams)}
    assert {n: (str(p["type"]), p["default"]) for n, p in cell.items()} == {n: (str(t), d) for n, (t, d) in fields.items()}


def test_train_command_refuses_a_wrong_type():
    proc = run_cli("train", "-p", "max_train_samples", "1.5", "-p", "processed_dir", "/nonexistent/splits")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "parameter 'max_train_samples' is 1.5 (float), expected int" in proc.stderr


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    "Wait until `text` appears in the file `path` (a process's log); fail if the process ends first."
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and text in path.read_text(): return
        assert proc.poll() is None, f"the run ended ({proc.returncode}) before logging {text!r}:\n{path.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} within {timeout} s:\n{path.read_text()[-3000:]}")


def test_runs_sharing_processed_dir_wait_for_each_other_and_never_mix_splits(tmp_path):
    "Run A writes its splits, run B (another seed) must wait while they are in use, then A's 02 refuses B's splits."
    from sentiment_nb.pipeline import SplitsLock
    processed, reports = tmp_path / "processed", tmp_path / "reports"
    common = ["-f", "params/tiny.yaml", "-p", "processed_dir", processed, "--reports-dir", reports]
    # run A: 01 writes the splits, 02 stops at a bad batch size (as a run interrupted before training)
    proc = run_cli("run", *common, "--run-id", "A", "--stages", "01,02", "-p", "batch_size", "0")
    assert proc.returncode == 1 and "batch_size=0 must be >= 1" in proc.stderr, proc.stderr[-3000:]
    manifest_a = json.loads((reports / "A" / "manifest.json").read_text())
    hash_a = json.loads((processed / "splits.json").read_text())["hash"]
    assert manifest_a["data_hash"] == hash_a and manifest_a["stages"][0]["data_hash"] == hash_a[:12]
    assert f"<td>{hash_a[:12]}</td>" in (reports / "A" / "index.html").read_text()

    # run B writes the same folder with another seed: it waits while a reader holds the folder
    reader = SplitsLock(processed, "the test, reading as run A's 02 would")
    reader.hold(exclusive=False)
    log = tmp_path / "b.log"
    with open(log, "w") as err:
        b = subprocess.Popen([str(BIN / "sentiment-nb"), "run", *map(str, common), "--run-id", "B", "--stages", "01",
                              "-p", "seed", "7"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            wait_for(log, f"waiting for processed_dir {processed}", b)
            assert "the test, reading" in log.read_text()
            time.sleep(1)
            assert json.loads((processed / "splits.json").read_text())["hash"] == hash_a, "B wrote while A read"
        finally:
            reader.release()
        assert b.wait(timeout=600) == 0, log.read_text()[-3000:]
    hash_b = json.loads((processed / "splits.json").read_text())["hash"]
    assert hash_b != hash_a

    # A goes on: its 02 refuses B's splits, naming both hashes, and the run stays failed
    proc = run_cli("run", "--resume", "A", "--reports-dir", reports, "-p", "batch_size", "16")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"have data hash {hash_b[:12]}, not {hash_a[:12]}" in proc.stderr, proc.stderr[-3000:]
    manifest_a = json.loads((reports / "A" / "manifest.json").read_text())
    assert manifest_a["data_hash"] == hash_a and manifest_a["status"] == "failed"
    assert not (reports / "A" / "model").exists(), "A trained on B's splits"
