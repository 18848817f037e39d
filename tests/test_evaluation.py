"""Stage 03 through the real runner: metrics, baselines, figures and the push to a local S3 server (keyed by the run
that trained the model), no secret in any file of the run folder although the run had AWS credentials in its
environment, the params dataclass against the parameters cell, and the newest completed run's model (with its
splits) when the run folder has none."""
import csv, json, secrets, shutil

import pytest

from conftest import ROOT, run_cli
from s3_server import folder_bytes, object_keys
from sentiment_nb.core import write_json
from sentiment_nb.evaluate import EvaluationParams
from sentiment_nb.pipeline import data_hash, parameters_cell_differences
from sentiment_nb.push import local_s3_server, pull_model

# a small 2-class slice given as parameters (not params/tiny.yaml, which also names other stages' parameters)
SLICE = ["-p", "dataset", "rotten_tomatoes", "-p", "max_rows", "400", "-p", "test_size", "0.2", "-p", "validation_size", "0.2"]


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory, untrained_model):
    "Stages 01 and 03 on a 400-row slice, pushing to a local S3 server that knows only the fake credentials below."
    base = tmp_path_factory.mktemp("eval-run")
    fake = {"AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(), "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)}
    with local_s3_server(base / "s3", access_key=fake["AWS_ACCESS_KEY_ID"], secret_key=fake["AWS_SECRET_ACCESS_KEY"]) as s3:
        proc = run_cli("run", "--stages", "01,03", "--run-id", "evalpush", "--reports-dir", base / "reports", *SLICE,
                       "-p", "processed_dir", base / "processed", "-p", "model_dir", untrained_model,
                       "-p", "push_model_s3.enabled", "true", "-p", "push_model_s3.bucket_name", "pipeline-models",
                       "-p", "push_model_s3.conditions", "[{metric: accuracy, threshold: 0.0}, {metric: ece, threshold: 1.0}]",
                       env={**fake, "AWS_ENDPOINT_URL_S3": s3.endpoint_url}, timeout=900)
        client = s3.client()
        keys = object_keys(client, "pipeline-models") if proc.returncode == 0 else []
        pulled = pull_model("pipeline-models", "sentiment-nb", cache_dir=base / "pulled", client=client) if keys else None
        pushed = {k: json.loads(client.get_object(Bucket="pipeline-models", Key=f"sentiment-nb/{k}")["Body"].read())
                  for k in ("latest.json", "untrained/manifest.json") if f"sentiment-nb/{k}" in keys}
    return {"proc": proc, "run_dir": base / "reports" / "evalpush", "keys": keys, "pulled": pulled, "secrets": fake,
            "pushed": pushed, "base": base}


def test_evaluation_params_match_the_parameters_cell():
    assert parameters_cell_differences(EvaluationParams, ROOT / "nbs" / "03_evaluation.ipynb") == []


def test_stage_passes_and_pushes_the_model(pushed_run, untrained_model):
    proc, run_dir = pushed_run["proc"], pushed_run["run_dir"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [(s["stage"], s["status"]) for s in manifest["stages"]] == [("01_preprocessing", "ok"), ("03_evaluation", "ok")]
    keys = set(pushed_run["keys"])
    # keyed by the run that trained the model (its training_summary.json says run "untrained"), not by this run
    assert {"sentiment-nb/latest.json", "sentiment-nb/untrained/manifest.json", "sentiment-nb/untrained/metrics.json",
            "sentiment-nb/untrained/README.md", "sentiment-nb/untrained/training_summary.json",
            "sentiment-nb/untrained/model/model.safetensors"} <= keys, sorted(keys)
    assert not [k for k in keys if k.startswith("sentiment-nb/evalpush/")], sorted(keys)
    for name in ("latest.json", "untrained/manifest.json"):
        got = pushed_run["pushed"][name]
        assert (got["run_id"], got["training_run_id"], got["evaluation_run_id"]) == ("untrained", "untrained", "evalpush"), got
    assert folder_bytes(pushed_run["pulled"]) == folder_bytes(untrained_model)


def test_metrics_files_hold_the_model_and_the_baselines(pushed_run):
    run_dir = pushed_run["run_dir"]
    report = json.loads((run_dir / "metrics.json").read_text())
    assert report["rows"] == 80 and report["labels"] == ["negative", "positive"]
    assert set(report["baselines"]) == {"majority", "vader", "tfidf_logreg"}
    m = report["metrics"]
    for k in ("accuracy", "macro_f1", "weighted_f1", "f1_negative", "roc_auc", "log_loss", "ece", "ece_temperature_scaled"):
        assert isinstance(m[k], float), k
    assert report["baselines"]["majority"]["accuracy"] == pytest.approx(0.575, abs=0.02)   # RT is ~58 % positive
    assert report["baselines"]["tfidf_logreg"]["accuracy"] > report["baselines"]["majority"]["accuracy"]
    assert m["temperature"] > 0 and report["validation_rows"] == 80 and sum(map(sum, report["confusion_matrix"])) == 80
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert {r["model"] for r in rows} == {"model", "majority", "vader", "tfidf_logreg"}
    assert len({(r["model"], r["metric"]) for r in rows}) == len(rows), "metrics.csv has a repeated (model, metric) row"
    assert float(next(r["value"] for r in rows if (r["model"], r["metric"]) == ("model", "accuracy"))) == m["accuracy"]


def test_report_shows_figures_baselines_and_push_outcome(pushed_run):
    run_dir = pushed_run["run_dir"]
    for fig in ("eval_confusion_matrix", "eval_confidence_histogram", "eval_reliability_diagram"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 5000
    assert (run_dir / "03_evaluation.html").read_text().count("data:image/png;base64") >= 3
    summary = json.loads((run_dir / "summaries" / "03_evaluation.json").read_text())
    assert summary["headline"]["push"] == "pushed", summary["headline"]
    assert "s3://pipeline-models/sentiment-nb/untrained/" in summary["headline"]["push outcome"], summary["headline"]
    index = (run_dir / "index.html").read_text()
    for text in ("test accuracy", "macro F1", "tfidf_logreg accuracy", "vader accuracy", "metrics: model and baselines",
                 "push conditions", 'src="figures/eval_reliability_diagram.png"'):
        assert text in index, text


def test_no_secret_in_any_file_of_the_run_dir(pushed_run):
    assert pushed_run["keys"], "the push did not happen, so the scan would prove nothing"
    files = [p for p in pushed_run["run_dir"].rglob("*") if p.is_file()]
    assert len(files) > 10
    for name, value in pushed_run["secrets"].items():
        hits = [str(p) for p in files if value.encode() in p.read_bytes()]
        assert not hits, f"{name} written to {hits}"


def test_without_a_model_in_the_run_folder_the_newest_completed_run_is_evaluated(pushed_run, untrained_model):
    """JupyterLab after `make run`: reports/notebook holds no model, so 03 with its defaults evaluates the newest completed
    run's model on that run's splits, and says which."""
    base = pushed_run["base"]
    reports, processed = base / "jupyter-reports", base / "processed"     # the splits 01 wrote in the fixture's run
    run = reports / "20261201-0815-done"
    shutil.copytree(untrained_model, run / "model")
    write_json(run / "manifest.json", {"run_id": run.name, "data_hash": data_hash(processed),
                                       "stages": [{"stage": "02_training", "status": "ok"}]})
    args = ("run", "--stages", "03", "--run-id", "notebook", "--reports-dir", reports, "-p", "processed_dir", processed,
            "-p", "ood_rows", "0", "-p", "baselines", "[majority]")
    proc = run_cli(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((reports / "notebook" / "metrics.json").read_text())
    assert (report["model_dir"], report["data_hash"]) == (str(run / "model"), data_hash(processed)), report["model_dir"]
    said = (reports / "notebook" / "03_evaluation.ipynb").read_text()
    assert f"run {run.name}, the newest completed run" in said and str(run / "model") in said
    # splits that are not that run's are refused: the inline tests of evaluation_inputs in nbs/03_evaluation.ipynb
