"""What users meet first (issue 17), through the real parts: `sentiment-nb serve` subprocesses over HTTP and Debian's
chromium, `sentiment-nb predict` subprocesses, real model folders (an untrained head) in a fake reports tree.
The Batch tab picks the text column as a person would, long texts say they were cut (or are scored in windows),
the newest completed pipeline run answers when no model is named, the Model tab shows only the served model's
metrics, the Predict tab's title and examples follow the model, an error clears the earlier answer, and the
notebook's check never leaks a server."""
import importlib.util, json, os, shutil, socket, subprocess, sys, threading, time, uuid
from pathlib import Path

import httpx
import pandas as pd
import pytest

from conftest import BIN, ROOT, run_cli, toast

_spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "bench_load.py")
bench = sys.modules["bench_load"] = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(bench)

SHOTS = Path(os.environ.get("SENTIMENT_NB_SHOTS", "/tmp/shots"))
# the review: its verdict comes last, far past the model's 64 input tokens
LONG_REVIEW = ("The first hour is a delight: sharp dialogue, a warm and funny cast, gorgeous photography and a score "
               "that lifts every scene. " * 4 + "But the last hour is a disaster: awful, boring, I hated it.")
COMPLETED = "20261201-120000-abcd"


def copy_model(src: Path, dst: Path, run_id: str, mtime: float) -> Path:
    "A copy of a model folder whose training summary names `run_id`, every file dated `mtime`."
    shutil.copytree(src, dst)
    summary = json.loads((dst / "training_summary.json").read_text())
    (dst / "training_summary.json").write_text(json.dumps({**summary, "run_id": run_id}))
    for f in dst.iterdir(): os.utime(f, (mtime, mtime))
    return dst


@pytest.fixture(scope="module")
def reports(untrained_model, tmp_path_factory):
    "A reports tree: a completed pipeline run (manifest, stage 02 ok) and a newer scratch model from a notebook."
    base = tmp_path_factory.mktemp("first-contact") / "reports"
    now = time.time()
    copy_model(untrained_model, base / COMPLETED / "model", COMPLETED, now - 3600)
    (base / COMPLETED / "manifest.json").write_text(json.dumps(
        {"run_id": COMPLETED, "status": "ok", "stages": [{"stage": "01_preprocessing", "status": "ok"},
                                                          {"stage": "02_training", "status": "ok"}]}))
    copy_model(untrained_model, base / "notebook" / "model", "notebook", now)
    return base


def serve(args: list, log: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    "`sentiment-nb serve ARGS` on a free port, returned once its model is ready."
    port = bench.free_port()
    out = open(log.with_suffix(".out"), "w")
    proc = subprocess.Popen([str(BIN / "sentiment-nb"), "serve", "--port", str(port), "--log", str(log), *map(str, args)],
                            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, text=True)
    proc.output_path = Path(out.name)
    url = f"http://127.0.0.1:{port}/"
    bench.wait_ready(url, proc, 180)
    return proc, url


# ---- 3. which model answers ---------------------------------------------------------------------------------------

def test_predict_without_model_prefers_the_completed_run(reports):
    proc = run_cli("predict", "great", "--reports-dir", reports, "--variant", "fp32", timeout=300, check=True)
    assert f"model: run {COMPLETED} at {reports / COMPLETED / 'model'} (fp32)" in proc.stderr, proc.stderr[-2000:]
    assert "notebook" not in proc.stderr


def test_predict_falls_back_to_a_scratch_model_with_a_warning(untrained_model, tmp_path):
    copy_model(untrained_model, tmp_path / "reports" / "notebook" / "model", "notebook", time.time())
    proc = run_cli("predict", "great", "--reports-dir", tmp_path / "reports", "--variant", "fp32", timeout=300, check=True)
    assert "no completed pipeline run under" in proc.stderr and "model: run notebook at" in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def served_default(reports, tmp_path_factory):
    "`serve` without --model on the reports tree, scoring long texts in windows."
    log = tmp_path_factory.mktemp("served-default") / "predictions.sqlite"
    proc, url = serve(["--reports-dir", reports, "--long-text", "windows", "--variant", "fp32"], log)
    yield {"url": url, "proc": proc}
    proc.terminate(); proc.wait(30)


def test_serve_without_model_serves_the_completed_run(served_default, reports):
    h = httpx.get(served_default["url"] + "health").json()
    assert (h["model_state"], h["run_id"]) == ("ready", COMPLETED), h
    out = served_default["proc"].output_path.read_text()
    assert f"model: run {COMPLETED} at {reports / COMPLETED / 'model'}" in out, out[-2000:]


# ---- 2. long texts --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(untrained_model, tmp_path_factory):
    "The demo on a model whose run folder holds another model's metrics.json (TMPDIR under the test's folder)."
    base = tmp_path_factory.mktemp("first-contact-demo")
    (base / "tmp").mkdir()
    model = copy_model(untrained_model, base / "run" / "model", "untrained", time.time() - 60)
    (base / "run" / "metrics.json").write_text(json.dumps({"model_run_id": "older-run", "metrics": {"accuracy": 0.99}}))
    proc, url = serve(["--model", model, "--variant", "fp32"], base / "predictions.sqlite", {"TMPDIR": str(base / "tmp")})
    yield {"url": url, "base": base, "model": model}
    proc.terminate(); proc.wait(30)


def test_api_says_when_tokens_were_cut(demo):
    r = httpx.post(demo["url"] + "predict", json={"texts": [LONG_REVIEW, "A fine film."]}, timeout=60).json()
    long, short = r["predictions"]
    assert (long["truncated"], long["tokens_truncated"], long["chars_truncated"], long["windows"] > 1) == (True, True, False, True)
    assert (short["truncated"], short["tokens_truncated"], short["windows"]) == (False, False, 1)
    one = httpx.post(demo["url"] + "predict", json={"text": "great " * 6000}, timeout=60).json()
    assert (one["truncated"], one["chars_truncated"], one["tokens_truncated"]) == (True, True, True)


def test_api_windows_scores_every_window(served_default, reports):
    r = httpx.post(served_default["url"] + "predict", json={"text": LONG_REVIEW}, timeout=60).json()
    assert (r["truncated"], r["tokens_truncated"]) == (False, False) and r["windows"] > 1, r
    from sentiment_nb.infer import load_model, predict_proba
    m = load_model(reports / COMPLETED / "model")
    want = predict_proba(m, [LONG_REVIEW], long_text="windows")[0]
    assert abs(r["scores"]["positive"] - float(want[1])) < 1e-4
    assert abs(r["scores"]["positive"] - float(predict_proba(m, [LONG_REVIEW])[0][1])) > 1e-6   # not the first window's


@pytest.mark.parametrize("mode,flag", [("first", True), ("windows", False)])
def test_predict_flags_truncated_texts(untrained_model, tmp_path, mode, flag):
    out = tmp_path / "scored.csv"
    proc = run_cli("predict", LONG_REVIEW, "short and sweet", "--model", untrained_model, "--variant", "fp32",
                   "--long-text", mode, "--out", out, timeout=300, check=True)
    scored = pd.read_csv(out)
    assert scored["truncated"].tolist() == [flag, False]
    assert ("note: 1 text longer than 64 tokens: only the first 64 tokens were scored" in proc.stderr) == flag, proc.stderr
    rows = [json.loads(l) for l in run_cli("predict", LONG_REVIEW, "--model", untrained_model, "--variant", "fp32",
                                           "--long-text", mode, "--json", timeout=300, check=True).stdout.splitlines()]
    assert rows[0]["truncated"] is flag


# ---- 4. the Model tab's metrics ------------------------------------------------------------------------------------

def test_model_card_shows_only_the_served_models_metrics(untrained_model, tmp_path):
    from sentiment_nb.app import DemoParams, ModelSlot, model_card
    model = copy_model(untrained_model, tmp_path / "run" / "model", "untrained", time.time() - 60)
    metrics = tmp_path / "run" / "metrics.json"
    slot = ModelSlot(model, variant="fp32")
    try:
        slot.load().result(120)
        settings = DemoParams(model_dir=str(model))
        metrics.write_text(json.dumps({"model_run_id": "untrained", "metrics": {"accuracy": 0.81}}))
        card, table, _ = model_card(slot, settings)
        assert table["model"].tolist() == [0.81] and "no evaluation" not in card, card
        metrics.write_text(json.dumps({"model_run_id": "older-run", "metrics": {"accuracy": 0.99}}))
        card, table, _ = model_card(slot, settings)
        assert table.empty and "no evaluation of this model" in card and "evaluated run older-run" in card, card
        metrics.write_text(json.dumps({"model_run_id": "untrained", "metrics": {"accuracy": 0.81}}))
        os.utime(metrics, (time.time() - 3600, time.time() - 3600))     # evaluated before these weights were written
        card, table, _ = model_card(slot, settings)
        assert table.empty and "is older than its weights" in card, card
    finally: slot.close()


# ---- 6. the notebook's check never leaks a server --------------------------------------------------------------

def test_a_failed_check_closes_the_demo(untrained_model, tmp_path):
    from sentiment_nb.app import DemoParams, run_demo
    port = bench.free_port()
    params = DemoParams(model_dir=str(untrained_model), prediction_log=str(tmp_path / "log.sqlite"), model_variant="fp32",
                        port=port, check_text="")
    with pytest.raises(httpx.HTTPStatusError, match="422"): run_demo(params)
    with socket.socket() as s: assert s.connect_ex(("127.0.0.1", port)) != 0, "the demo still listens after a failed check"
    assert not [t.name for t in threading.enumerate() if t.name in ("demo-server", "model-scorer", "prediction-log")]


# ---- 9. title and examples follow the model ------------------------------------------------------------------

def test_demo_texts_follow_the_classes_and_dataset(untrained_model, tmp_path):
    from sentiment_nb.app import EXAMPLES, GENERIC_EXAMPLES, demo_texts
    three = tmp_path / "three"; three.mkdir()
    (three / "config.json").write_text(json.dumps({"id2label": {"0": "negative", "1": "neutral", "2": "positive"}}))
    t = demo_texts(three)
    assert t["title"] == "sentiment_nb · text sentiment (negative, neutral, positive)" and t["examples"] == GENERIC_EXAMPLES
    assert "English only" in t["language"] and "movie" not in t["placeholder"] + t["title"]
    processed = tmp_path / "processed"; processed.mkdir()
    (processed / "splits.json").write_text(json.dumps({"hash": "h1", "source": {"dataset": "rotten_tomatoes"}}))
    movie = tmp_path / "movie"; shutil.copytree(untrained_model, movie)
    (movie / "training_summary.json").write_text(json.dumps({"run_id": "m", "data_hash": "h1",
                                                             "params": {"processed_dir": str(processed)}}))
    assert demo_texts(movie)["title"].startswith("sentiment_nb · movie-review sentiment") and demo_texts(movie)["examples"] == EXAMPLES
    (processed / "splits.json").write_text(json.dumps({"hash": "h2", "source": {"dataset": "rotten_tomatoes"}}))
    assert demo_texts(movie)["examples"] == GENERIC_EXAMPLES               # the splits were rewritten since: unknown
    (movie / "training_summary.json").write_text(json.dumps({"run_id": "m", "model_name": "bert-base-german-cased"}))
    assert demo_texts(movie)["language"] == ""                              # not one of the English encoders


# ---- 1, 2, 4, 9, 10 in the browser ------------------------------------------------------------------------------

def upload_csv(page, path: Path, first: bool = False) -> None:
    if not first: page.locator("#upload button[aria-label='Clear']").first.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))


def test_browser_first_contact(demo, browser_page, tmp_path):
    page = browser_page
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(demo["url"])
    page.get_by_text("sentiment_nb · text sentiment (negative, positive)").first.wait_for()
    page.get_by_text("English only").first.wait_for()
    assert "movie" not in page.locator("#review textarea").get_attribute("placeholder")
    # 2: a long text says it was cut
    page.locator("#review textarea").fill(LONG_REVIEW)
    page.locator("#classify").click()
    page.get_by_text("only the first 64 tokens were read").wait_for()
    label = page.locator("#prediction [data-testid=label-output-value]")
    assert label.inner_text() in ("negative", "positive")
    page.screenshot(path=str(SHOTS / "predict.png"), full_page=True)
    # 10: an error clears the earlier answer
    page.locator("#review textarea").fill("  ")
    page.locator("#classify").click()
    toast(page, "the review is empty")
    assert label.count() == 0 and "tokens were read" not in page.locator("#timing").inner_text()

    # 1: the Batch tab scores `review`, not the ids; a file of numbers is refused until a column is chosen
    page.get_by_role("tab", name="Batch").click()
    csv = tmp_path / f"reviews-{uuid.uuid4().hex[:6]}.csv"
    csv.write_text("id,review\n101,great fun from start to end\n102,boring and far too long\n103,\n"
                   f"104,\"{LONG_REVIEW}\"\n", encoding="utf-8")
    upload_csv(page, csv, first=True)
    page.wait_for_function("document.querySelector('#column input').value === 'review'")
    page.locator("#score-file").click()
    page.get_by_text("scored 3 of 4 rows").wait_for()
    assert "column review" in page.locator("#batch-status").inner_text().replace("`", "")
    assert "1 truncated" in page.locator("#batch-status").inner_text()
    href = page.locator("#scored a[download]").first.get_attribute("href")
    scored = pd.read_csv(pd.io.common.StringIO(httpx.get(href).text), dtype=str, keep_default_na=False)
    assert scored.columns.tolist() == ["id", "review", "label", "confidence", "truncated", "reason"]
    assert scored["id"].tolist() == ["101", "102", "103", "104"] and scored["truncated"].tolist() == ["False"] * 3 + ["True"]
    assert [bool(l) for l in scored["label"]] == [True, True, False, True]
    page.screenshot(path=str(SHOTS / "batch.png"), full_page=True)
    numbers = tmp_path / "numbers.csv"; numbers.write_text("id,score\n1,0.5\n2,0.7\n", encoding="utf-8")
    upload_csv(page, numbers)
    page.wait_for_function("document.querySelector('#column input').value === ''")
    page.locator("#score-file").click()
    toast(page, "no column of the CSV holds text")

    # 4: another model's metrics are not shown
    page.get_by_role("tab", name="Model").click()
    page.get_by_text("no evaluation of this model").first.wait_for()
    assert "0.99" not in page.content()
    # 10: the Log tab puts label and confidence before the text
    page.get_by_role("tab", name="Log").click()
    page.locator("#log").get_by_text("confidence").first.wait_for()
    headers = [h.strip() for h in page.locator("#log thead th").all_inner_texts() if h.strip()]
    assert headers[:3] == ["time", "label", "confidence"] and headers.index("text") > headers.index("truncated"), headers
    assert headers[3:5] == ["correction", "truncated"], headers          # users' corrections right after the label
    page.screenshot(path=str(SHOTS / "log.png"), full_page=True)
