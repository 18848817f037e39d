"""Explanations on a model that has learned something: stages 01 and 02 train the embedded MiniLM on a 2,000-row
slice of rotten_tomatoes (one epoch, about two minutes on two cores; the tiny run's 4-step model is no better
than chance, so its attributions say nothing). On it, the top word for `positive` in a plainly positive review
is one of its positive words, and deleting each text's top attributed words lowers the predicted class's
probability more than deleting as many random words."""
import pytest

from conftest import run_cli
from sentiment_nb.data import load_splits
from sentiment_nb.explain import EXPLAIN_METHODS, explain, faithfulness
from sentiment_nb.infer import load_model

TRAIN = ["-p", "dataset", "rotten_tomatoes", "-p", "max_rows", "2000", "-p", "test_size", "0.2", "-p", "validation_size", "0.2",
         "-p", "max_input_length", "48", "-p", "batch_size", "16", "-p", "n_epochs", "1", "-p", "num_threads", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A model trained for one epoch on 1,200 rows (validation accuracy about 0.7), with its splits."
    base = tmp_path_factory.mktemp("explain-run")
    run_cli("run", "--stages", "01,02", "--run-id", "explain", "--reports-dir", base / "reports", *TRAIN,
            "-p", "processed_dir", base / "processed", timeout=1500, check=True)
    return {"model": load_model(base / "reports" / "explain" / "model"), "processed": base / "processed"}


@pytest.mark.parametrize("method", EXPLAIN_METHODS)
def test_top_word_of_a_positive_review(trained, method):
    words = explain(trained["model"], "a wonderful, moving film", "positive", method)
    assert [w["word"] for w in words] == ["a", "wonderful", ",", "moving", "film"]
    top = max(words, key=lambda w: w["weight"])
    assert top["word"] in ("wonderful", "moving"), words


@pytest.mark.parametrize("method", EXPLAIN_METHODS)
def test_deleting_top_words_hurts_more_than_random_ones(trained, method):
    splits, _ = load_splits(trained["processed"])
    texts = splits["test"]["text"].tolist()[:40]
    f = faithfulness(trained["model"], texts, k=2, method=method, n_steps=16)
    assert f["texts"] >= 35 and f["top_k_drop"] > f["random_drop"] + 0.05, f
