"""Stage 05 through the real runner, on the tiny run's model and splits: a log of in-domain traffic (the
validation split, scored by the model and written by the demo's own `PredictionLog`) gets no drift verdict, a
log of tweets sent to the movie model does, with drift.json, the figures and the HTML report written; 05 runs
only when asked. The feedback functions on a live log: stored and committed while the log's writer runs,
refused (with the API's status) for an unknown class, an unknown request and a log without texts, exported
once per request and per text."""
import json, sqlite3
from contextlib import closing

import pandas as pd
import pytest

from conftest import run_cli
from sentiment_nb import drift, infer
from sentiment_nb.app import PredictionLog, prediction_rows
from sentiment_nb.data import load_splits
from sentiment_nb.distill import split_ood_tweets
from sentiment_nb.pipeline import ON_REQUEST_STAGES, parameters_cell_differences, select_stages, stage_notebooks


def fill_log(path, m, texts, store_texts=True):
    "Score texts with the model and log them as the demo does; their request ids."
    log = PredictionLog(path, store_texts)
    rows = prediction_rows(texts, infer.predict(m, texts), [False] * len(texts), "api", m.run_id, 1.0)
    log.write(rows); log.close()
    return [r["request_id"] for r in rows]


def test_05_runs_only_when_asked(root):
    every = stage_notebooks()
    assert "05_monitoring" in every and "05_monitoring" in ON_REQUEST_STAGES
    assert "05_monitoring" not in select_stages(every, None)
    assert list(select_stages(every, "05")) == ["05_monitoring"]
    assert parameters_cell_differences(drift.MonitoringParams, root / "nbs" / "05_monitoring.ipynb") == []


@pytest.fixture(scope="module")
def monitored(tiny_run, tmp_path_factory):
    "Stage 05 on a plain log and on a log of tweets, against the tiny run's model."
    base, model_dir = tmp_path_factory.mktemp("monitor"), tiny_run["run_dir"] / "model"
    assert (model_dir / "config.json").exists(), tiny_run["proc"].stderr[-3000:]   # 05 needs 01's splits and 02's model only
    m = infer.load_model(model_dir, variant="auto")
    splits, _ = load_splits(tiny_run["processed_dir"])
    logs = {"plain": splits["validation"]["text"].tolist(), "tweets": split_ood_tweets()[0]["text"].tolist()[:150]}
    out = {}
    for name, texts in logs.items():
        fill_log(base / f"{name}.sqlite", m, texts)
        proc = run_cli("run", "--stages", "05", "--run-id", name, "--reports-dir", base / "reports",
                       "-p", "prediction_log", base / f"{name}.sqlite", "-p", "model_dir", model_dir,
                       "-p", "processed_dir", tiny_run["processed_dir"], timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        out[name] = base / "reports" / name
    return out


def test_plain_traffic_is_not_drift(monitored):
    report = json.loads((monitored["plain"] / "drift.json").read_text())
    assert report["verdict"] in ("ok", "watch"), report["checks"]
    assert report["predictions"] > 30 and all(c["verdict"] != "drift" for c in report["checks"])


def test_tweets_sent_to_a_movie_model_are_drift(monitored):
    d = monitored["tweets"]
    report = json.loads((d / "drift.json").read_text())
    verdicts = {c["check"]: c["verdict"] for c in report["checks"]}
    assert report["verdict"] == "drift" and verdicts["text length (characters)"] == "drift", report["checks"]
    assert verdicts["feedback disagreement rate"] == "skipped"
    for fig in ("monitor_predictions_over_time", "monitor_class_share", "monitor_distributions"):
        assert (d / "figures" / f"{fig}.png").stat().st_size > 1000
    assert "drift" in (d / "05_monitoring.html").read_text()
    manifest = json.loads((d / "manifest.json").read_text())
    assert [(s["stage"], s["status"]) for s in manifest["stages"]] == [("05_monitoring", "ok")]


def test_05_names_a_missing_log(tiny_run, tmp_path):
    proc = run_cli("run", "--stages", "05", "--run-id", "nolog", "--reports-dir", tmp_path / "reports",
                   "-p", "prediction_log", tmp_path / "absent.sqlite", "-p", "model_dir", tiny_run["run_dir"] / "model",
                   "-p", "processed_dir", tiny_run["processed_dir"], timeout=600)
    assert proc.returncode != 0 and "no prediction log at" in proc.stderr and "absent.sqlite" in proc.stderr
    assert not (tmp_path / "absent.sqlite").exists()


@pytest.fixture
def live_log(untrained_model, tmp_path):
    "A prediction log with four logged predictions and its writer still running, as in the demo."
    m = infer.load_model(untrained_model)
    log = PredictionLog(tmp_path / "log.sqlite")
    texts = ["great film", "=HYPERLINK(\"x\") awful", "great film", "meh"]
    rows = prediction_rows(texts, infer.predict(m, texts), [False] * 4, "api", "r1", 1.0)
    log.write(rows)
    yield {"log": log, "path": tmp_path / "log.sqlite", "ids": [r["request_id"] for r in rows], "classes": m.labels,
           "predicted": [r["label"] for r in rows]}
    log.close()


def test_feedback_is_committed_beside_a_running_log(live_log):
    ids, classes = live_log["ids"], live_log["classes"]
    stored = drift.record_feedback(live_log["path"], ids[0], "negative", classes)
    assert (stored["label"], stored["predicted"]) == ("negative", live_log["predicted"][0])
    live_log["log"].write(prediction_rows(["later"], [{"label": "positive", "confidence": 0.7}], [False], "ui", "r1", 1.0))
    with closing(sqlite3.connect(live_log["path"])) as con:   # another connection, as another process would open it
        assert con.execute("SELECT request_id, label FROM feedback").fetchall() == [(ids[0], "negative")]
        assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 5


@pytest.mark.parametrize("request_id,label,status,says", [
    ("nope", "negative", 404, "no logged prediction has request id 'nope'"),
    (None, "negative", 422, "non-empty request id"),
    ("FIRST", "neutral", 422, "expected one of ['negative', 'positive']"),
    ("FIRST", 1, 422, "is not a class of the model"),
])
def test_bad_feedback_is_refused_and_loses_nothing(live_log, request_id, label, status, says):
    ids = live_log["ids"]
    drift.record_feedback(live_log["path"], ids[1], "negative", live_log["classes"])
    with pytest.raises(drift.FeedbackError) as e:
        drift.record_feedback(live_log["path"], ids[0] if request_id == "FIRST" else request_id, label, live_log["classes"])
    assert e.value.status == status and says in str(e.value)
    assert drift.read_feedback(live_log["path"])[["request_id", "label"]].values.tolist() == [[ids[1], "negative"]]


def test_feedback_refused_where_texts_are_not_logged(untrained_model, tmp_path):
    ids = fill_log(tmp_path / "hidden.sqlite", infer.load_model(untrained_model), ["private text"], store_texts=False)
    with pytest.raises(drift.FeedbackError, match="does not keep texts") as e:
        drift.record_feedback(tmp_path / "hidden.sqlite", ids[0], "positive", ["negative", "positive"])
    assert e.value.status == 409 and drift.read_feedback(tmp_path / "hidden.sqlite").empty


def test_export_keeps_the_latest_correction_once(live_log, tmp_path):
    ids, classes = live_log["ids"], live_log["classes"]
    for rid, label in ((ids[0], "positive"), (ids[0], "negative"), (ids[1], "negative"), (ids[2], "positive"), (ids[3], "positive")):
        drift.record_feedback(live_log["path"], rid, label, classes)
    out = drift.export_feedback(live_log["path"], tmp_path / "fb" / "feedback.csv")
    rows = pd.read_csv(tmp_path / "fb" / "feedback.csv", keep_default_na=False)
    assert list(rows.columns) == ["text", "label"] and out == {"path": str(tmp_path / "fb" / "feedback.csv"), "rows": 3, "feedback_rows": 5}
    # "great film" was corrected twice (requests 0 and 2): the later request's label; the formula is neutralised
    assert sorted(map(tuple, rows.values.tolist())) == [("'=HYPERLINK(\"x\") awful", "negative"), ("great film", "positive"), ("meh", "positive")]
