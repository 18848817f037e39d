"""The feedback loop end to end: corrections stored in a real prediction log (the demo's `PredictionLog` and
`drift.record_feedback`), exported by `sentiment-nb feedback export`, and fed to stage 01 (`extra_training_data`,
the real runner on params/tiny.yaml): they join the training split only, the ones equal (up to case and
whitespace) to a validation or test text are removed and counted, and splits.json says how many came in. A bad
feedback file is refused by name and row; `predict --explain` gives each text its words."""
import json

import pandas as pd
import pytest

from conftest import run_cli
from sentiment_nb import drift, infer
from sentiment_nb.app import PredictionLog, prediction_rows
from sentiment_nb.data import load_splits, near_key, prepare_splits

TINY = dict(dataset="rotten_tomatoes", max_rows=400, test_size=0.2, validation_size=0.2, seed=42)   # params/tiny.yaml's 01


@pytest.fixture(scope="module")
def feedback_csv(untrained_model, tmp_path_factory):
    "A feedback file exported by the CLI from a log with four corrections: two new texts, a test and a validation text."
    base = tmp_path_factory.mktemp("feedback")
    plain, _ = prepare_splits(**TINY, processed_dir=base / "plain")
    texts = ["a brand new remark about this film", f"  {plain['test'].text[0].upper()} ", "another fresh opinion",
             plain["validation"].text[0]]
    m = infer.load_model(untrained_model)
    log = PredictionLog(base / "log.sqlite")
    rows = prediction_rows(texts, infer.predict(m, texts), [False] * 4, "api", "r1", 1.0)
    log.write(rows); log.close()
    for r, label in zip(rows, ["positive", "negative", "negative", "positive"]):
        drift.record_feedback(base / "log.sqlite", r["request_id"], label, m.labels)
    proc = run_cli("feedback", "export", "--log", base / "log.sqlite", "--out", base / "fb" / "feedback.csv", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 text,label rows (from 4 corrections)" in proc.stdout, proc.stdout
    return {"path": base / "fb" / "feedback.csv", "texts": texts, "plain": plain, "base": base}


def test_feedback_joins_the_training_split_only(feedback_csv):
    base = feedback_csv["base"]
    proc = run_cli("run", "-f", "params/tiny.yaml", "--stages", "01", "--run-id", "fb", "--reports-dir", base / "reports",
                   "-p", "processed_dir", base / "processed", "-p", "extra_training_data", f"[{feedback_csv['path']}]", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    splits, meta = load_splits(base / "processed")
    extra = meta["source"]["extra_training_data"]
    assert meta["extra_training_rows"] == 2 and (extra["rows_read"], extra["removed_in_validation_or_test"]) == (4, 2), extra
    plain = feedback_csv["plain"]
    assert meta["splits"]["train"] == len(plain["train"]) + 2
    for name in ("validation", "test"):   # untouched, and no feedback text in them
        assert splits[name].text.tolist() == plain[name].text.tolist()
    new = {near_key(t) for t in feedback_csv["texts"][::2]}
    assert new <= set(splits["train"].text.map(near_key))
    headline = json.loads((base / "reports" / "fb" / "summaries" / "01_preprocessing.json").read_text())["headline"]
    assert headline["training rows from extra_training_data (feedback)"] == 2, headline
    assert headline["extra rows removed (a validation/test text)"] == 2, headline


@pytest.mark.parametrize("table,says", [
    ({"text": ["fine", "odd"], "label": ["positive", "meh"]}, "label 'meh' in row 1 is not in class_names ['negative', 'positive']"),
    ({"review": ["fine"], "label": ["positive"]}, "text column 'text' not in extra_training_data file"),
    ({"text": ["fine"]}, "label column 'label' not in extra_training_data file"),
])
def test_a_bad_feedback_file_is_named(tmp_path, table, says):
    bad = tmp_path / "bad.csv"
    pd.DataFrame(table).to_csv(bad, index=False)
    with pytest.raises((ValueError, KeyError)) as e:
        prepare_splits(**TINY, processed_dir=tmp_path / "p", extra_training_data=[str(bad)])
    assert says in str(e.value) and str(bad) in str(e.value), str(e.value)
    assert not (tmp_path / "p" / "splits.json").exists()   # nothing written


def test_predict_explain_gives_words(untrained_model, tmp_path):
    proc = run_cli("predict", "--model", untrained_model, "--explain", "a wonderful, moving film", "", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = proc.stdout.splitlines()
    assert first.split("\t")[2] == "a wonderful, moving film" and first.split("\t")[3].startswith("words: "), first
    assert "not scored" in second
    proc = run_cli("predict", "--model", untrained_model, "--explain", "--json", "a wonderful, moving film", timeout=300)
    row = json.loads(proc.stdout.splitlines()[0])
    assert [w["word"] for w in row["words"]] == ["a", "wonderful", ",", "moving", "film"], row
    assert row["words"][1]["start"] == 2 and row["words"][1]["end"] == 11
    pd.DataFrame({"text": ["a wonderful, moving film", "dull"]}).to_csv(tmp_path / "in.csv", index=False)
    proc = run_cli("predict", "--model", untrained_model, "--explain", "--file", tmp_path / "in.csv", "--out", tmp_path / "out.csv", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert "words" in out.columns and set(out["words"][0].split(", ")) <= {"a", "wonderful", "moving", "film"}, out
