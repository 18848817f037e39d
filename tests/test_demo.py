"""The demo (04) served for real: `sentiment-nb serve` in a subprocess on a free loopback port, its HTTP API,
gradio_client, Debian's chromium driven by Playwright, a bounded load test and a SIGKILL under load."""
import asyncio, importlib.util, json, os, shutil, signal, sqlite3, subprocess, sys, threading, time, uuid
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, run_cli, toast

_spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "bench_load.py")
bench = sys.modules["bench_load"] = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(bench)

UPLOAD_LIMIT_MB = 0.05


@pytest.fixture(scope="module")
def server(untrained_model, tmp_path_factory):
    """The demo on a free port, its temp dir (TMPDIR) under the test's folder so uploads can be found.
    SENTIMENT_NB_DEMO_MODEL serves a trained model instead (how docs/demo.png is made)."""
    base, model = tmp_path_factory.mktemp("demo"), os.environ.get("SENTIMENT_NB_DEMO_MODEL") or untrained_model
    (base / "tmp").mkdir()
    port = bench.free_port()
    proc = bench.start_server(model, base / "predictions.sqlite", port, "--max-upload-mb", str(UPLOAD_LIMIT_MB),
                              env={"TMPDIR": str(base / "tmp")})
    run_id = json.loads((Path(model) / "training_summary.json").read_text())["run_id"]
    yield {"url": f"http://127.0.0.1:{port}/", "port": port, "log": base / "predictions.sqlite", "tmp": base / "tmp",
           "run_id": run_id}
    proc.terminate(); proc.wait(30)


def logged_ids(log_path) -> set:
    con = sqlite3.connect(str(log_path))
    try: return {r[0] for r in con.execute("SELECT request_id FROM predictions")}
    finally: con.close()


def test_health_and_predict_single_and_batch(server):
    h = httpx.get(server["url"] + "health").json()
    assert (h["model_state"], h["run_id"], h["labels"]) == ("ready", server["run_id"], ["negative", "positive"])
    assert h["uptime_s"] > 0
    from sentiment_nb.infer import resolve_variant
    assert h["variant"] == resolve_variant("auto")            # the fastest runtime installed (ONNX int8 here)
    one = httpx.post(server["url"] + "predict", json={"text": "A warm and funny film."}).json()
    assert one["label"] in ("negative", "positive") and abs(sum(one["scores"].values()) - 1) < 1e-4
    assert one["confidence"] == max(one["scores"].values()) and one["processing_ms"] > 0 and one["run_id"] == server["run_id"]
    many = httpx.post(server["url"] + "predict", json={"texts": ["good", "bad", "so-so"]}).json()
    assert len(many["predictions"]) == 3 and all(p["truncated"] is False for p in many["predictions"])
    ids = {one["request_id"]} | {p["request_id"] for p in many["predictions"]}
    assert ids <= logged_ids(server["log"]), "an answered prediction is not in the log"


@pytest.mark.parametrize("body,status,message", [
    ({"text": ""}, 422, "text is empty or only whitespace"),
    ({"text": " \n\t "}, 422, "text is empty or only whitespace"),
    ({"text": 5}, 422, "text is not a string (int)"),
    ({"texts": "one"}, 422, '"texts" must be a non-empty list'),
    ({"texts": []}, 422, '"texts" must be a non-empty list'),
    ({"texts": ["ok", None]}, 422, "texts[1] is not a string (NoneType)"),
    (b'{"text": "x \\ud800"}', 422, "text is not valid Unicode: a lone surrogate"),
    ({"texts": ["ok"] * 257}, 413, "holds 257 texts, the limit is 256"),
    ({"review": "ok"}, 422, 'either "text"'),
    (b"{not json", 400, "not valid UTF-8 JSON"),
    (b'{"text": "caf\xe9"}', 400, "not valid UTF-8 JSON"),
    (b"x" * 9_000_000, 413, "the limit is 8000000"),
])
def test_api_bad_input_gets_4xx_json(server, body, status, message):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server["url"] + "predict", timeout=60, **kw)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_api_cuts_a_1mb_text_instead_of_failing(server):
    r = httpx.post(server["url"] + "predict", json={"text": "great film " * 100_000}, timeout=60)
    assert r.status_code == 200 and r.json()["truncated"] is True
    assert httpx.get(server["url"] + "health").json()["model_state"] == "ready"


def test_gradio_client_calls_the_classify_endpoint(server):
    from gradio_client import Client
    label, timing = Client(server["url"], verbose=False).predict("A moving, beautiful film.", api_name="/classify")
    assert label["label"] in ("negative", "positive")
    assert {c["label"] for c in label["confidences"]} == {"negative", "positive"}
    assert " ms" in timing and server["run_id"] in timing


def test_binds_loopback_only(server):
    "The listening socket's address is 127.0.0.1 (0100007F in /proc/net/tcp), not every interface."
    port_hex = f"{server['port']:04X}"
    listening = [l.split()[1] for l in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if l.split()[1].endswith(":" + port_hex) and l.split()[3] == "0A"]
    assert listening == ["0100007F:" + port_hex], listening
    assert not Path("/proc/net/tcp6").exists() or f":{port_hex} " not in Path("/proc/net/tcp6").read_text()


def test_serve_refuses_a_missing_model_at_once():
    proc = run_cli("serve", "--model", "/no/such/model", "--port", "0", timeout=120)
    assert proc.returncode == 2 and "no model at '/no/such/model'" in proc.stderr


def test_browser_predict_batch_and_bad_input(server, browser_page, tmp_path):
    page, url = browser_page, server["url"]
    page.goto(url)
    review = f"A wonderful, moving film with a brilliant cast (review {uuid.uuid4().hex[:6]})."
    page.locator("#review textarea").fill(review)
    page.locator("#classify").click()
    label = page.locator("#prediction [data-testid=label-output-value]")
    label.wait_for()
    assert label.inner_text() in ("negative", "positive")
    page.get_by_text(server["run_id"]).first.wait_for()
    assert " ms" in page.locator("#timing").inner_text()
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("SENTIMENT_NB_DEMO_SCREENSHOT"): shutil.copy(shot, os.environ["SENTIMENT_NB_DEMO_SCREENSHOT"])

    for text, message in [("", "the review is empty"), ("   \n ", "the review is empty")]:
        page.locator("#review textarea").fill(text); page.locator("#classify").click(); toast(page, message)
    page.locator("#review textarea").fill("so good " * 130_000)                       # ~1 MB: cut, not crashed
    page.locator("#classify").click()
    page.get_by_text("cut to the first 5000 characters").wait_for()

    page.get_by_role("tab", name="Batch").click()
    name = f"reviews-{uuid.uuid4().hex[:8]}.csv"
    csv = tmp_path / name
    csv.write_text("id,text\n1,great fun\n2,\n3,boring and long\n", encoding="utf-8")
    page.locator("#upload input[type=file]").set_input_files(str(csv))
    page.wait_for_function("document.querySelector('#column input').value === 'text'")
    page.locator("#score-file").click()
    page.get_by_text("scored 2 of 3 rows").wait_for()
    href = page.locator("#scored a[download]").first.get_attribute("href")
    scored = httpx.get(href).text.splitlines()
    assert scored[0] == "id,text,label,confidence,truncated,reason" and len(scored) == 4
    assert scored[2] == "2,,,,False,empty or only whitespace"
    uploaded = list(server["tmp"].rglob(name))
    assert uploaded, "the upload is not in the server's temp dir"
    outside = [p for top in ROOT.iterdir() if top.name not in (".venv", ".git") for p in
               ([top] if top.is_file() else top.rglob(name)) if p.name == name]
    assert not outside, f"the upload was written into the project: {outside}"

    page.locator("#column input").fill("review"); page.keyboard.press("Enter")
    page.locator("#score-file").click(); toast(page, "column 'review' is not in the CSV; its columns are ['id', 'text']")
    bad = tmp_path / "latin1.csv"; bad.write_bytes("text\ncaf\xe9 cr\xe8me\n".encode("latin-1"))
    page.locator("#upload button[aria-label='Clear']").first.click()
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    toast(page, "not UTF-8 text (byte 0xe9")
    big = tmp_path / "big.csv"; big.write_text("text\n" + "a long review line\n" * 4000, encoding="utf-8")
    page.locator("#upload button[aria-label='Clear']").first.click()
    page.locator("#upload input[type=file]").set_input_files(str(big))
    toast(page, "exceed the maximum allowed size")

    page.get_by_role("tab", name="Log").click()
    page.get_by_text(review).first.wait_for()
    page.get_by_role("tab", name="Model").click()
    page.get_by_text("max input length").first.wait_for()


def test_load_bench_baseline_is_the_named_code(tmp_path, monkeypatch):
    "`bench_load.py --baseline REV` serves REV's sentiment_nb (a revision once resolved to the checkout itself)."
    monkeypatch.chdir(ROOT)                                  # where a bare `HEAD` could be mistaken for a path
    head = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:sentiment_nb/app.py"], capture_output=True, check=True).stdout
    code = bench.baseline_code("HEAD", tmp_path / "base")
    assert code == tmp_path / "base" and (code / "sentiment_nb" / "app.py").read_bytes() == head
    assert bench.baseline_code(str(ROOT / "sentiment_nb"), tmp_path / "unused") == bench.ROOT    # a folder is taken as is
    with pytest.raises(SystemExit, match="neither a folder"): bench.baseline_code("no-such-rev", tmp_path / "x")
    with pytest.raises(SystemExit, match="without sentiment_nb"): bench.baseline_code(str(tmp_path), tmp_path / "y")


def test_load_200_clients_no_error_no_lost_row(server):
    result = asyncio.run(bench.run_load(server["url"], clients=200, total=400))
    summary = result.summary(200)
    print("load:", {k: summary[k] for k in ("requests", "errors", "requests_per_s", "p50_ms", "p95_ms", "p99_ms")})
    assert summary["errors"] == 0, summary["first_errors"]
    assert summary["acknowledged"] == 400
    assert bench.missing_from_log(server["log"], result.acked) == []


def test_sigkill_under_load_loses_no_acknowledged_prediction(untrained_model, tmp_path):
    "Also: lazy loading, release when idle, basic auth from the environment, a log without texts."
    port, log_path, creds = bench.free_port(), tmp_path / "predictions.sqlite", ("demo", "s3cret-pw")
    url = f"http://127.0.0.1:{port}/"
    proc = bench.start_server(untrained_model, log_path, port, "--lazy", "--idle-unload-minutes", "0.02", "--no-log-texts",
                              env={"SENTIMENT_NB_DEMO_USER": creds[0], "SENTIMENT_NB_DEMO_PASSWORD": creds[1]})
    try:
        assert httpx.get(url + "health").json()["model_state"] == "stopped"
        assert httpx.post(url + "predict", json={"text": "good"}).status_code == 401
        assert httpx.post(url + "predict", json={"text": "good"}, auth=creds, timeout=120).status_code == 200
        assert httpx.get(url + "config").status_code == 401                           # the UI asks for a login
        with httpx.Client() as ui:
            assert ui.post(url + "login", data={"username": creds[0], "password": "wrong"}).status_code >= 400
            assert ui.post(url + "login", data={"username": creds[0], "password": creds[1]}).status_code == 200
            assert "components" in ui.get(url + "config").json()
        deadline = time.monotonic() + 30
        while httpx.get(url + "health").json()["model_state"] != "stopped":
            assert time.monotonic() < deadline, "the model was not released after 1.2 s idle"
            time.sleep(0.2)

        result = bench.LoadResult()
        load = threading.Thread(target=lambda: asyncio.run(
            bench.run_load(url, clients=50, total=100_000, result=result, stop_on_error=True, auth=creds)))
        load.start()
        deadline = time.monotonic() + 180
        while len(result.acked) < 150:
            assert time.monotonic() < deadline and load.is_alive(), f"only {len(result.acked)} answers"
            time.sleep(0.05)
        # another process holds the log's write lock while requests keep coming: nothing may be answered
        # until its rows are committed, so the kill below must not lose any answered prediction
        blocker = sqlite3.connect(str(log_path), timeout=30, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        before = len(result.acked)
        time.sleep(3)
        os.kill(proc.pid, signal.SIGKILL)
        blocker.execute("ROLLBACK"); blocker.close()
        load.join(120)
        print(f"answers: {before} before the lock, {len(result.acked) - before} while it was held")
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None: proc.kill()
    assert result.errors, "the load never saw the server die"
    assert len(result.acked) >= 150
    assert bench.missing_from_log(log_path, result.acked) == []
    con = sqlite3.connect(str(log_path))
    try: texts, hashes = con.execute("SELECT COUNT(text), COUNT(DISTINCT text_hash) FROM predictions").fetchone()
    finally: con.close()
    assert texts == 0 and hashes > 150, "--no-log-texts stored texts (or no hashes)"


def test_serve_a_model_pulled_from_s3(untrained_model, tmp_path):
    "`--model s3://bucket/prefix` pulls the latest pushed run from a real (local SeaweedFS) S3 server."
    from sentiment_nb.push import local_s3_server, push_model
    with local_s3_server(tmp_path / "s3") as s3:
        pushed = push_model(untrained_model, "demo-models", "sentiment", "r-s3", client=s3.client())
        assert pushed["files"] > 3
        port = bench.free_port()
        proc = bench.start_server("s3://demo-models/sentiment", tmp_path / "predictions.sqlite", port,
                                  env={**s3.env(), "SENTIMENT_NB_MODEL_CACHE": str(tmp_path / "cache")})
        try:
            h = httpx.get(f"http://127.0.0.1:{port}/health").json()
            assert h["model_state"] == "ready" and "model_dir" not in h
            assert any(p.name == "config.json" for p in (tmp_path / "cache").rglob("*")), "not pulled into the cache"
            r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": "A fine film."}, timeout=60)
            assert r.status_code == 200 and r.json()["label"] in ("negative", "positive")
        finally:
            proc.terminate(); proc.wait(30)
