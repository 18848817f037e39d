"`sentiment-nb predict` as a user runs it: a real subprocess on a real model folder (an untrained head)."
import json, os, shutil, subprocess

import numpy as np
import pandas as pd
import pytest

from conftest import BIN, ROOT, run_cli


def run_cli_stdin(stdin: str, *args, timeout=600):
    "Run `sentiment-nb ARGS` with `stdin` as its standard input."
    return subprocess.run([str(BIN / "sentiment-nb"), *map(str, args)], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


@pytest.fixture(scope="module")
def scores_fp32(untrained_model):
    "In-process fp32 probabilities of the texts the tests send, to check what the CLI prints."
    from sentiment_nb.infer import load_model, predict_proba
    texts = ["a wonderful, moving film", "dull and far too long", "meh"]
    return texts, predict_proba(load_model(untrained_model), texts)


def test_text_arguments_print_label_and_confidence(untrained_model, scores_fp32):
    texts, probs = scores_fp32
    proc = run_cli("predict", *texts, "--model", untrained_model, "--variant", "fp32", timeout=300, check=True)
    assert f"model: run untrained at {untrained_model} (fp32)" in proc.stderr    # which model answers
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3, proc.stdout
    for line, text, p in zip(lines, texts, probs):
        label, conf, echoed = line.split("\t")
        assert (label, echoed) == (["negative", "positive"][p.argmax()], text)
        assert abs(float(conf) - p.max()) < 1e-3


def test_json_output_matches_the_library(untrained_model, scores_fp32):
    texts, probs = scores_fp32
    proc = run_cli("predict", *texts, "--model", untrained_model, "--variant", "fp32", "--json", timeout=300, check=True)
    rows = [json.loads(l) for l in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts
    np.testing.assert_allclose([[r["scores"]["negative"], r["scores"]["positive"]] for r in rows], probs, atol=1e-5)
    assert all(r["confidence"] == max(r["scores"].values()) for r in rows)


def test_stdin_lines_with_the_default_variant(untrained_model, scores_fp32):
    texts, probs = scores_fp32
    proc = run_cli_stdin("\n".join(texts) + "\n\n", "predict", "-", "--model", untrained_model, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(l) for l in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts + [""]           # the blank line keeps its row, unscored
    assert rows[3] == {"text": "", "label": None, "confidence": None, "scores": None, "truncated": False,
                       "error": "empty or only whitespace"}
    onnx = np.array([[r["scores"]["negative"], r["scores"]["positive"]] for r in rows[:3]])
    assert np.abs(onnx - probs).max() < 0.1                    # auto (ONNX int8) agrees with fp32


def test_file_scored_in_batches_keeps_its_columns(untrained_model, tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"id": range(7), "review": ["great", "awful", None, "fine", "so-so", "bad " * 100, "ok"]}).to_csv(src, index=False)
    proc = run_cli("predict", "--file", src, "--column", "review", "--out", out, "--model", untrained_model,
                   "--variant", "onnx", "--batch-size", "2", timeout=600, check=True)
    scored = pd.read_csv(out, keep_default_na=False)
    assert list(scored.columns) == ["id", "review", "label", "confidence", "p_negative", "p_positive", "truncated", "note"]
    assert scored["id"].tolist() == list(range(7))
    ok = scored.drop(index=2)                                  # row 2 had no review: kept, not scored
    np.testing.assert_allclose(ok[["p_negative", "p_positive"]].astype(float).sum(axis=1), 1, atol=1e-5)
    assert set(ok["label"]) <= {"negative", "positive"} and set(ok["note"]) == {""}
    assert scored.loc[2, ["label", "confidence", "p_negative", "note"]].tolist() == ["", "", "", "empty or only whitespace"]
    assert f"7 rows -> {out}: 6 scored, 1 not scored" in proc.stderr and "scoring (onnx)" in proc.stderr
    assert f"model: run untrained at {untrained_model} (onnx)" in proc.stderr


def test_file_without_column_scores_the_text_column_not_the_ids(untrained_model, tmp_path):
    "Issue 17: a CSV `id,review` scored its ids when the first column won; now the column is picked as the Batch tab picks it."
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"id": [11, 12, 13], "review": ["a wonderful, moving film", "dull", "fine"]}).to_csv(src, index=False)
    proc = run_cli("predict", "--file", src, "--out", out, "--model", untrained_model, "--variant", "fp32", timeout=300, check=True)
    assert f"scoring column 'review' of {src}" in proc.stderr
    from sentiment_nb.infer import load_model, predict_proba
    probs = predict_proba(load_model(untrained_model, variant="fp32"), ["a wonderful, moving film", "dull", "fine"])
    np.testing.assert_allclose(pd.read_csv(out)[["p_negative", "p_positive"]].to_numpy(), probs, atol=1e-4)
    pd.DataFrame({"id": [1, 2], "score": [0.5, 3]}).to_csv(src, index=False)
    proc = run_cli("predict", "--file", src, "--model", untrained_model, timeout=300)
    assert proc.returncode == 2 and "no column of" in proc.stderr and "--column" in proc.stderr, proc.stderr


def test_newest_run_is_the_default_model(untrained_model, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(untrained_model, reports / "20261201-000000-beef" / "model")
    proc = run_cli("predict", "great", "--reports-dir", reports, "--variant", "fp32", timeout=300, check=True)
    assert proc.stdout.split("\t")[0] in ("negative", "positive")


@pytest.mark.parametrize("args, message", [
    (["--file", "{tmp}/missing.csv"], "--file {tmp}/missing.csv does not exist"),
    (["--file", "{tmp}/in.csv", "--column", "body"], "column 'body' not in {tmp}/in.csv; its columns are ['text']"),
    (["great", "--out", "{tmp}/out.txt"], "unknown format '.txt'"),
    (["great", "--out", "{tmp}/no/out.csv"], "--out {tmp}/no/out.csv: the folder {tmp}/no does not exist"),
    (["great", "--out", "{tmp}/dir.csv"], "--out {tmp}/dir.csv is a folder: expected a file path"),
    ([], "nothing to score"),
    (["great", "--reports-dir", "{tmp}/no-reports"], "no model found under"),
    (["great", "--model", "{tmp}/no-model"], "no model at"),
])
def test_bad_input_names_the_problem(untrained_model, tmp_path, args, message):
    pd.DataFrame({"text": ["a"]}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "dir.csv").mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    if "--reports-dir" not in args and "--model" not in args: args += ["--model", str(untrained_model)]
    proc = run_cli("predict", *args, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message.format(tmp=tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr and "model: run" not in proc.stderr     # refused before the model loads
    assert not (tmp_path / "out.txt").exists()
