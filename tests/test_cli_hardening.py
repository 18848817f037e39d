"""`sentiment-nb predict` and `serve` against careless and hostile input, as real subprocesses: formula cells in
CSV output, broken model folders, output and log paths that cannot be written, and one output row per input row
(a text that `infer.unscorable_reason` refuses keeps its row with the reason). Every refusal is one line, exit 2."""
import json, os, shutil, subprocess, time

import pandas as pd
import pytest

from conftest import BIN, ROOT, run_cli

FORMULAS = ["=1+1", "+SUM(A1:A9)", "-2 stars, =HYPERLINK(\"http://x\")", "@cmd", "\tTAB first", " =padded", "fine film"]


def assert_one_line_error(proc, fragment):
    "Exit 2 with `fragment` in a one-line stderr message and no traceback."
    err = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def formula_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("formulas") / "in.parquet"
    pd.DataFrame({"id": range(len(FORMULAS)), "text": FORMULAS, "=evil column": FORMULAS}).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv_output_cannot_run_formulas(untrained_model, formula_file, tmp_path, suffix, sep):
    out = tmp_path / f"scored{suffix}"
    run_cli("predict", "--file", formula_file, "--out", out, "--model", untrained_model, "--variant", "fp32",
            timeout=300, check=True)
    back = pd.read_csv(out, sep=sep, keep_default_na=False)
    expected = ["'" + t if t.lstrip(" ").startswith(("=", "+", "-", "@", "\t")) else t for t in FORMULAS]
    assert back["text"].tolist() == expected and back["'=evil column"].tolist() == expected
    assert set(back["label"]) <= {"negative", "positive"}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_jsonl_and_parquet_keep_the_original_text(untrained_model, formula_file, tmp_path, suffix):
    out = tmp_path / f"scored{suffix}"
    run_cli("predict", "--file", formula_file, "--out", out, "--model", untrained_model, "--variant", "fp32",
            timeout=300, check=True)
    back = pd.read_parquet(out) if suffix == ".parquet" else pd.read_json(out, lines=True)
    assert back["text"].tolist() == FORMULAS and back["=evil column"].tolist() == FORMULAS


@pytest.fixture(scope="module")
def broken_models(untrained_model, tmp_path_factory):
    "A folder with only config.json, and a copy whose model.safetensors is cut in half."
    base = tmp_path_factory.mktemp("broken")
    (base / "config-only").mkdir()
    shutil.copy(untrained_model / "config.json", base / "config-only")
    shutil.copytree(untrained_model, base / "truncated")
    weights = base / "truncated" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    return base


@pytest.mark.parametrize("command", ["predict", "serve"])
@pytest.mark.parametrize("folder,fragment", [
    ("config-only", "config-only has no weights: model.safetensors is missing"),
    ("truncated", "truncated: model.safetensors is broken ("),
])
def test_a_broken_model_folder_is_one_line(broken_models, tmp_path, command, folder, fragment):
    args = ["great", "--variant", "fp32"] if command == "predict" else ["--port", "0", "--lazy", "--log", tmp_path / "l.sqlite"]
    proc = run_cli(command, "--model", broken_models / folder, *args, timeout=300)
    assert_one_line_error(proc, fragment)
    assert str(broken_models / folder) in proc.stderr


def test_a_broken_model_folder_is_a_clear_error_in_python(broken_models):
    "The check sits in load_model, so the demo and stage 03 get the same message."
    from sentiment_nb.infer import load_model
    for variant in ("fp32", "onnx"):
        with pytest.raises(FileNotFoundError, match="has no weights"): load_model(broken_models / "config-only", variant=variant)
        with pytest.raises(ValueError, match="model.safetensors is broken"): load_model(broken_models / "truncated", variant=variant)


def test_out_into_a_missing_folder_is_refused_before_scoring(untrained_model, tmp_path):
    rows = pd.DataFrame({"text": ["good"] * 5000})
    rows.to_csv(tmp_path / "in.csv", index=False)
    t0 = time.monotonic()
    proc = run_cli("predict", "--file", tmp_path / "in.csv", "--out", tmp_path / "missing" / "out.csv",
                   "--model", untrained_model, timeout=300)
    assert_one_line_error(proc, f"the folder {tmp_path / 'missing'} does not exist")
    assert "scoring" not in proc.stderr and "model: run" not in proc.stderr      # nothing loaded, nothing scored
    assert time.monotonic() - t0 < 60


def test_a_failed_write_keeps_the_earlier_output(untrained_model, tmp_path):
    "A table the writer refuses (parquet cannot hold a column of lists and dicts) is one line; the earlier file stays whole."
    out = tmp_path / "out.parquet"
    out.write_bytes(b"earlier results")
    (tmp_path / "in.jsonl").write_text('{"text": "good", "mixed": [1, 2]}\n{"text": "bad", "mixed": {"a": 1}}\n')
    proc = run_cli("predict", "--file", tmp_path / "in.jsonl", "--out", out, "--model", untrained_model,
                   "--variant", "fp32", timeout=300)
    err = proc.stderr.splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert err.startswith(f"sentiment-nb predict: error: --out {out}: cannot write the scored rows as parquet"), err
    assert out.read_bytes() == b"earlier results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.parquet"]      # no temporary file left


@pytest.mark.parametrize("log,fragment", [
    ("{tmp}", "--log {tmp} is a folder: expected a file path"),
    ("{tmp}/a-file/log.sqlite", "{tmp}/a-file is a file, not a folder"),
    ("{tmp}/a-file", "--log {tmp}/a-file is not an SQLite database"),
    ("/proc/sentiment-nb-log.sqlite", "--log /proc/sentiment-nb-log.sqlite cannot be written"),
])
def test_serve_refuses_a_log_it_cannot_write_before_starting(untrained_model, tmp_path, log, fragment):
    (tmp_path / "a-file").write_text("notes, not a database")
    proc = run_cli("serve", "--model", untrained_model, "--port", "0", "--lazy", "--log", log.format(tmp=tmp_path),
                   timeout=120)
    assert_one_line_error(proc, fragment.format(tmp=tmp_path))
    assert (tmp_path / "a-file").read_text() == "notes, not a database"


def test_serve_names_the_model_that_answers(untrained_model, tmp_path):
    proc = subprocess.Popen([str(BIN / "sentiment-nb"), "serve", "--model", str(untrained_model), "--port", "0", "--lazy",
                             "--variant", "fp32", "--log", str(tmp_path / "new" / "log.sqlite")], cwd=ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    import threading
    timer = threading.Timer(120, proc.kill)                    # a server that never prints cannot hang the test
    timer.daemon = True; timer.start()
    lines = []
    try:
        while len(lines) < 5 and not lines[-1:] == [f"model: run untrained at {untrained_model} (fp32)\n"]:
            lines.append(proc.stderr.readline())               # warnings may come first; the line comes before serving
    finally: timer.cancel(); proc.terminate(); proc.wait(30)
    assert f"model: run untrained at {untrained_model} (fp32)\n" in lines, lines


def run_stdin(data: bytes, *args):
    return subprocess.run([str(BIN / "sentiment-nb"), "predict", "-", *map(str, args)], cwd=ROOT, input=data,
                          capture_output=True, timeout=300)


def test_stdin_keeps_every_line(untrained_model):
    "5 lines in (two blank), 5 rows out; undecodable bytes are a row with the reason, not a crash."
    proc = run_stdin(b"good film\n\nbad film\n   \r\nbroken \xff byte\n", "--model", untrained_model, "--variant", "fp32", "--json")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    rows = [json.loads(l) for l in proc.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == ["good film", "", "bad film", "   ", "broken \\udcff byte"]
    assert [r["label"] is None for r in rows] == [False, True, False, True, True]
    assert [r.get("error") for r in rows][1:4:2] == ["empty or only whitespace"] * 2
    assert rows[4]["error"].startswith("not valid Unicode: a lone surrogate")
    printed = run_stdin(b"good film\n\n", "--model", untrained_model, "--variant", "fp32")
    lines = printed.stdout.decode().splitlines()
    assert len(lines) == 2 and lines[1] == "-\t-\t\tnot scored: empty or only whitespace", lines


def test_text_arguments_follow_the_same_rule(untrained_model, tmp_path):
    proc = run_cli("predict", "good", "", " ", "--model", untrained_model, "--variant", "fp32", "--out", tmp_path / "o.jsonl",
                   timeout=300, check=True)
    rows = pd.read_json(tmp_path / "o.jsonl", lines=True)
    assert rows["text"].tolist() == ["good", "", " "] and rows["note"].tolist() == ["", "empty or only whitespace", "empty or only whitespace"]
    assert rows["label"].isna().tolist() == [False, True, True]
    assert f"3 rows -> {tmp_path / 'o.jsonl'}: 1 scored, 2 not scored" in proc.stderr
