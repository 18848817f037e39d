"""Bad input corpus: each case states the expected error (type and message fragment) or handled output at
each entry point it reaches. Entry points here: the Python API (`sentiment_nb.data`) and the pipeline runner
(`sentiment-nb run`, a real papermill run of the stage). Cases that reach training, the CLI's `predict` and
the HTTP API live beside those entry points' own tests and are listed in the README's Reliability section."""
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli
from sentiment_nb.data import normalise_text, prepare_splits


def write(path: Path, content) -> Path:
    "Write bytes, text, or a DataFrame (by the path's suffix) and return the path."
    if isinstance(content, pd.DataFrame):
        {".csv": lambda: content.to_csv(path, index=False), ".parquet": lambda: content.to_parquet(path),
         ".jsonl": lambda: content.to_json(path, orient="records", lines=True)}[path.suffix]()
    elif isinstance(content, bytes): path.write_bytes(content)
    else: path.write_text(content, encoding="utf-8")
    return path


def reviews(n=40, **cols):
    "A small two-class review table."
    base = {"text": [f"review number {i} was {'great' if i % 2 else 'awful'}" for i in range(n)],
            "label": ["pos" if i % 2 else "neg" for i in range(n)]}
    return pd.DataFrame({**base, **cols})


# name, file name, content, extra prepare_splits kwargs, expected exception type, message fragment
FAILING = [
    ("missing text column", "r.csv", reviews().rename(columns={"text": "body"}), {}, KeyError, "text column 'text' not in"),
    ("labels outside the mapping", "r.csv", reviews().assign(label=["pos", "neg", "meh", "pos"] * 10),
     {"label_mapping_dict": {"pos": "positive", "neg": "negative"}}, ValueError, "label 'meh' in row 2 is not in"),
    ("mixed label types outside the mapping", "r.csv", reviews().assign(label=[1, "5", 5.0, "great"] * 10),
     {"label_mapping_dict": {1: "negative", 5: "positive"}}, ValueError, "label 'great' in row 3"),
    ("one class only", "r.csv", reviews().assign(label="pos"), {}, ValueError, "one class only"),
    ("empty file", "r.csv", b"", {}, ValueError, "is empty (0 bytes)"),
    ("header only", "r.csv", "text,label\n", {}, ValueError, "has no rows"),
    ("0-byte parquet", "r.parquet", b"", {}, ValueError, "is empty (0 bytes)"),
    ("broken parquet", "r.parquet", b"PAR1 not really", {}, ValueError, "cannot parse"),
    ("invalid UTF-8", "r.csv", "text,label\n".encode() + b"caf\xe9 \xff\xfe,pos\nok,neg\n", {}, ValueError,
     "is not valid utf-8 text"),
    ("broken CSV", "r.csv", 'text,label\n"never closed,pos\nx,neg,extra,cols\n', {}, ValueError, "cannot parse"),
    ("split sizes summing to 1", "r.csv", reviews(), {"test_size": 0.5, "validation_size": 0.5}, ValueError,
     "leaves no training rows"),
    ("split size out of range", "r.csv", reviews(), {"test_size": 0.0}, ValueError, "test_size=0.0 must be between 0 and 1"),
    ("too few rows for the splits", "r.csv", reviews(6), {"test_size": 0.1}, ValueError, "too few"),
    ("only empty texts", "r.csv", reviews(4).assign(text=["", " ", "\t", "\x00"]), {}, ValueError, "empty after cleaning"),
    ("unknown format", "r.docx", b"PK", {}, ValueError, "unknown format '.docx'"),
]


@pytest.mark.parametrize("name,fname,content,kw,exc,fragment", FAILING, ids=[c[0] for c in FAILING])
def test_python_api_rejects_bad_input(tmp_path, name, fname, content, kw, exc, fragment):
    path = write(tmp_path / fname, content)
    out = tmp_path / "processed"
    with pytest.raises(exc, match=None) as info:
        prepare_splits(str(path), processed_dir=out, **kw)
    assert fragment in str(info.value), f"{name}: {info.value}"
    assert not out.exists(), f"{name}: something was written for a dataset that was refused"


def test_refused_input_keeps_earlier_splits(tmp_path):
    good = write(tmp_path / "good.csv", reviews())
    out = tmp_path / "processed"
    prepare_splits(str(good), processed_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError):
        prepare_splits(str(write(tmp_path / "bad.csv", reviews().assign(label="pos"))), processed_dir=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


HANDLED = [  # raw text -> what cleaning makes of it
    ("empty string", "", ""),
    ("whitespace only", " \t\n ", ""),
    ("NUL bytes", "good\x00film\x00", "good film"),
    ("emoji", "loved it 😍🎬", "loved it 😍🎬"),
    ("right-to-left", "סרט מצוין", "סרט מצוין"),
    ("HTML", "<p>Great <b>cast</b> &amp; crew</p><script>x</script>", "Great cast & crew x"),
]


@pytest.mark.parametrize("name,raw,expected", HANDLED, ids=[c[0] for c in HANDLED])
def test_cleaning_handles_odd_text(name, raw, expected):
    assert normalise_text(raw) == expected


def test_huge_text_and_latin1_file_are_handled(tmp_path):
    rows = reviews()
    rows.loc[0, "text"] = "very long review " * 65_000          # ~1 MB in one cell
    path = tmp_path / "big.csv"
    rows.to_csv(path, index=False, encoding="latin-1")
    splits, meta = prepare_splits(str(path), processed_dir=tmp_path / "p", encoding="latin-1")
    assert sum(meta["splits"].values()) == 40
    assert max(len(t) for s in splits.values() for t in s["text"]) > 1_000_000
    latin = write(tmp_path / "l1.csv", "text,label\n".encode() + "".join(
        f"caf\xe9 number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40)).encode("latin-1"))
    splits, _ = prepare_splits(str(latin), processed_dir=tmp_path / "p2", encoding="latin-1")
    assert any("café" in t for t in splits["train"]["text"])


RUNNER = [  # (case, file name, content, -p overrides, message fragment in stderr)
    ("missing text column", "r.csv", reviews().rename(columns={"text": "body"}), [], "text column 'text' not in"),
    ("one class only", "r.csv", reviews().assign(label="pos"), [], "one class only"),
    ("invalid UTF-8", "r.csv", "text,label\n".encode() + b"\xff\xfe,pos\n", [], "is not valid utf-8 text"),
    ("split sizes summing to 1", "r.csv", reviews(), ["-p", "test_size", "0.6", "-p", "validation_size", "0.4"],
     "leaves no training rows"),
]


@pytest.mark.parametrize("name,fname,content,extra,fragment", RUNNER, ids=[c[0] for c in RUNNER])
def test_runner_names_the_problem_and_the_stage(tmp_path, name, fname, content, extra, fragment):
    path = write(tmp_path / fname, content)
    proc = run_cli("run", "--stages", "01", "--reports-dir", tmp_path / "reports", "--run-id", "bad",
                   "-p", "dataset", path, "-p", "processed_dir", tmp_path / "p", *extra, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "stage 01_preprocessing (01_preprocessing.ipynb) failed in cell" in proc.stderr
    assert fragment in proc.stderr, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "reports" / "bad" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and fragment in manifest["stages"][0]["error"]


@pytest.mark.parametrize("args,fragment", [
    (["-p", "no_such_name", "1"], "unknown parameter(s) 'no_such_name'"),
    (["-f", "params/none.yaml"], "parameters file"),
    (["--stages", "42"], "no stage '42'"),
    (["-p", "run_dir", "/tmp/x"], "set by the runner"),
])
def test_runner_rejects_wrong_parameters_before_starting(tmp_path, args, fragment):
    proc = run_cli("run", "--reports-dir", tmp_path, *args, timeout=120)
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    "Real splits of 200 Rotten Tomatoes rows, for the stages that read splits."
    out = tmp_path_factory.mktemp("splits")
    prepare_splits("rotten_tomatoes", max_rows=200, processed_dir=out)
    return out


@pytest.mark.parametrize("name,value,fragment", [
    ("batch_size", "0", "batch_size=0 must be >= 1"),
    ("learning_rate", "-0.001", "learning_rate=-0.001 must be > 0"),
    ("n_epochs", "0", "training parameter n_epochs=0"),   # 0 or 0.0: n_epochs is declared a float
])
def test_runner_refuses_bad_training_values_before_training(tmp_path, tiny_splits, name, value, fragment):
    proc = run_cli("run", "--stages", "02", "--reports-dir", tmp_path, "--run-id", "bad", "-p", "processed_dir",
                   tiny_splits, "-p", name, value, timeout=300)
    assert proc.returncode == 1 and "stage 02_training" in proc.stderr, proc.stderr[-2000:]
    assert fragment in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "bad" / "model").exists() and not (tmp_path / "bad" / "train").exists()


def test_cli_predict_scores_odd_texts_from_a_file(tmp_path, untrained_model):
    "Odd texts are scored; empty ones (the rule of `infer.unscorable_reason`, as the API's 422) keep their row unscored."
    odd = ["", "   ", "nul\x00byte", "loved it 😍🎬", "סרט מצוין", "<b>bold</b> &amp; brash", "long review " * 90_000]
    pd.DataFrame({"text": odd}).to_csv(tmp_path / "odd.csv", index=False)
    proc = run_cli("predict", "--file", tmp_path / "odd.csv", "--out", tmp_path / "scored.csv",
                   "--model", untrained_model, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = pd.read_csv(tmp_path / "scored.csv", keep_default_na=False)
    assert len(scored) == len(odd)
    assert scored["label"].tolist()[:2] == ["", ""] and set(scored["note"][:2]) == {"empty or only whitespace"}
    assert set(scored["label"][2:]) <= {"negative", "positive"} and set(scored["note"][2:]) == {""}
    assert scored["confidence"][2:].astype(float).between(0, 1).all()


def test_float_labels_without_a_mapping_are_their_ints(tmp_path):
    "A label column pandas wrote as 1.0/0.0 (an int column that had a NaN) gives the classes '0' and '1'."
    rows = reviews().assign(label=[i % 2 for i in range(40)]).astype({"label": float})
    _, meta = prepare_splits(str(write(tmp_path / "f.csv", rows)), processed_dir=tmp_path / "p")
    assert meta["id2label"] == {"0": "0", "1": "1"} and sum(meta["splits"].values()) == 40
    mixed = rows.assign(label=["1", 0, 1.0, "0.0"] * 10)
    _, meta = prepare_splits(str(write(tmp_path / "m.jsonl", mixed)), processed_dir=tmp_path / "p2")
    assert meta["id2label"] == {"0": "0", "1": "1"}
    with pytest.raises(ValueError) as info:                    # the NaN itself: named, not a class of its own
        prepare_splits(str(write(tmp_path / "n.csv", rows.assign(label=[1.0, None] * 20))), processed_dir=tmp_path / "p3")
    assert "row 1 has no label (empty or NaN; 20 rows without a label)" in str(info.value)
    with pytest.raises(ValueError) as info:                    # a label outside: the message compares like with like
        prepare_splits(str(write(tmp_path / "o.csv", rows)), class_names=["0", "2"], processed_dir=tmp_path / "p4")
    assert "label '1.0' (read as '1') in row 1 is not in class_names ['0', '2']" in str(info.value)


def null_and_empty_texts(n=100):
    "Reviews where some texts are null, empty or only whitespace."
    texts = [None if i % 10 == 3 else "" if i % 10 == 5 else "  " if i % 10 == 7 else f"review {i} was {'great' if i % 2 else 'awful'}"
             for i in range(n)]
    return reviews(n).assign(text=texts)


def test_eda_and_preprocessing_share_one_cleaning_rule(tmp_path):
    "Stage 00's functions on null and empty texts: they go the way 01 drops them (01's own clean_and_dedupe), no crash."
    from transformers import AutoTokenizer
    from sentiment_nb.core import embedded_model_path
    from sentiment_nb.data import clean_and_dedupe, load_labeled_dataset
    from sentiment_nb.eda import class_balance, examples_per_class, text_lengths, top_words_per_class
    for path in (write(tmp_path / "nulls.jsonl", null_and_empty_texts()), write(tmp_path / "nulls.csv", null_and_empty_texts())):
        raw, names, _ = load_labeled_dataset(str(path))
        kept, quality = clean_and_dedupe(raw)
        assert quality["rows_in"] == 100 and quality["dropped_short"] == 30 and len(kept) == 70, (path.name, quality)
        lengths = text_lengths(kept, AutoTokenizer.from_pretrained(embedded_model_path()))
        assert len(lengths) == 70 and lengths["tokens"].min() > 2
        assert class_balance(kept)["rows"].sum() == 70 and len(examples_per_class(kept)) == 6
        assert not top_words_per_class(kept, min_count=1).empty
        splits, meta = prepare_splits(str(path), processed_dir=tmp_path / path.stem)
        assert sum(meta["splits"].values()) == len(kept) and meta["source"]["cleaning"] == quality


def test_stage_00_runs_on_null_texts(tmp_path):
    path = write(tmp_path / "nulls.jsonl", null_and_empty_texts())
    proc = run_cli("run", "--stages", "00", "--reports-dir", tmp_path / "reports", "--run-id", "nulls",
                   "-p", "dataset", path, "-p", "max_rows_for_tokens", "50", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "reports" / "nulls" / "manifest.json").read_text())
    assert manifest["status"] == "ok", manifest
    headline = json.loads((tmp_path / "reports" / "nulls" / "summaries" / "00_eda.json").read_text())["headline"]
    assert (headline["rows"], headline["rows after cleaning"], headline["dropped as too short"]) == (100, 70, 30), headline
