"""Why this label and corrections in the demo, served for real (`start_demo`: uvicorn on a free loopback port):
`POST /predict` with `"explain"`, `POST /feedback` (good and hostile bodies, a log without texts), plain predictions
while an explanation runs, and Debian's chromium: highlighted words, a correction, the Log and Monitor tabs.
SENTIMENT_NB_DEMO_MODEL serves a trained model and SENTIMENT_NB_DEMO_SCREENSHOTS names a folder for the README's
screenshots (how docs/predict_explain.png and docs/monitor.png are made)."""
import concurrent.futures as cf, os, shutil, sqlite3, time, uuid
from pathlib import Path

import httpx
import pytest

from sentiment_nb.app import DemoParams, start_demo, wait_until_ready

REVIEWS = [
    "A wonderful, moving film with a brilliant cast and a script full of warmth.",
    "A dull, lifeless mess with wooden acting and a plot that goes nowhere at all.",
    "The visuals are stunning, but the story is thin and the second half drags badly.",
    "Funny, clever and surprisingly touching: I laughed and cried in the same scene.",
    "Two hours of clichés, bad dialogue and a villain nobody could take seriously.",
]


def serve(model, log_path, **kw):
    variant = "auto" if os.environ.get("SENTIMENT_NB_DEMO_MODEL") else "fp32"
    running = start_demo(DemoParams(model_dir=str(model), prediction_log=str(log_path), model_variant=variant, **kw))
    wait_until_ready(running.url)
    return running


@pytest.fixture(scope="module")
def server(untrained_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("demo-explain")
    running = serve(os.environ.get("SENTIMENT_NB_DEMO_MODEL") or untrained_model, base / "predictions.sqlite")
    yield {"url": running.url, "log": base / "predictions.sqlite", "labels": running.demo.slot.health()["labels"]}
    running.close()


def feedback_rows(log_path) -> list:
    con = sqlite3.connect(str(log_path))
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name='feedback'").fetchone(): return []
        return con.execute("SELECT request_id, label, predicted FROM feedback ORDER BY id").fetchall()
    finally: con.close()


def test_predict_explain_true_false_and_bad_type(server):
    url = server["url"] + "predict"
    plain = httpx.post(url, json={"text": REVIEWS[0]}, timeout=60).json()
    assert "words" not in plain and plain["request_id"], plain                  # off by default
    assert "words" not in httpx.post(url, json={"text": REVIEWS[0], "explain": False}, timeout=60).json()
    one = httpx.post(url, json={"text": REVIEWS[0], "explain": True}, timeout=60).json()
    words = one["words"]
    assert [w["word"] for w in words][:3] == ["A", "wonderful", ","], words
    assert all(REVIEWS[0][w["start"]:w["end"]] == w["word"] for w in words)
    assert abs(sum(abs(w["weight"]) for w in words) - 1) < 1e-6
    many = httpx.post(url, json={"texts": REVIEWS[:3], "explain": True}, timeout=60).json()["predictions"]
    assert [len(p["words"]) > 5 and p["request_id"] for p in many] and all(
        t[w["start"]:w["end"]] == w["word"] for p, t in zip(many, REVIEWS) for w in p["words"])
    for bad in ("yes", 1, None, [True], {"on": True}):
        r = httpx.post(url, json={"text": "fine", "explain": bad}, timeout=60)
        assert r.status_code == 422 and r.json()["error"].startswith('"explain" must be true or false, got'), r.text


def test_plain_predictions_keep_going_while_an_explanation_runs(server):
    url = server["url"] + "predict"
    big = [f"{r} Seen on day {i}, and I would say the same again." for i in range(24) for r in REVIEWS]   # 120 texts
    with cf.ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        slow = pool.submit(lambda: httpx.post(url, json={"texts": big, "explain": True}, timeout=600))
        time.sleep(1.0)
        plain = []
        for text in REVIEWS * 2:
            t = time.monotonic(); r = httpx.post(url, json={"text": text}, timeout=60)
            plain.append((r.status_code, time.monotonic() - t))
        assert not slow.done(), f"the explanation ended within {time.monotonic() - t0:.1f} s: too small to test overlap"
        explained = slow.result()
    assert [s for s, _ in plain] == [200] * len(plain), plain
    assert max(t for _, t in plain) < 10, plain          # not queued behind the explanation
    assert explained.status_code == 200 and len(explained.json()["predictions"]) == len(big)
    assert all(p["words"] for p in explained.json()["predictions"])


def test_feedback_good_unknown_id_unknown_class(server):
    labels = server["labels"]
    p = httpx.post(server["url"] + "predict", json={"text": f"{REVIEWS[1]} {uuid.uuid4().hex[:6]}"}, timeout=60).json()
    other = [c for c in labels if c != p["label"]][0]
    before = len(feedback_rows(server["log"]))
    r = httpx.post(server["url"] + "feedback", json={"request_id": p["request_id"], "label": other}, timeout=60)
    assert r.status_code == 200 and (r.json()["label"], r.json()["predicted"]) == (other, p["label"]), r.text
    assert feedback_rows(server["log"])[before:] == [(p["request_id"], other, p["label"])]     # committed when answered
    r = httpx.post(server["url"] + "feedback", json={"request_id": "no-such-id", "label": other}, timeout=60)
    assert r.status_code == 404 and "no logged prediction has request id 'no-such-id'" in r.json()["error"], r.text
    r = httpx.post(server["url"] + "feedback", json={"request_id": p["request_id"], "label": "meh"}, timeout=60)
    assert r.status_code == 422 and f"label 'meh' is not a class of the model: expected one of {labels}" in r.json()["error"]
    assert len(feedback_rows(server["log"])) == before + 1


@pytest.mark.parametrize("body,status,message", [
    (b"\xff{", 400, "not valid UTF-8 JSON"),
    (b"[" * 50_000, 400, "nested too deeply"),
    (b'["r", "positive"]', 422, 'exactly "request_id" and "label"'),
    (b'{"request_id": "r"}', 422, "got ['request_id']"),
    (b'{"request_id": "r", "label": "positive", "admin": true}', 422, "got ['admin', 'label', 'request_id']"),
    (b'{"request_id": {"$ne": null}, "label": "positive"}', 422, '"request_id" must be a string, got dict'),
    (b'{"request_id": "r", "label": ["positive"]}', 422, '"label" must be a string, got list'),
    (b'{"request_id": "x\' OR \'1\'=\'1", "label": "positive"}', 404, "no logged prediction has request id"),
    (b'{"request_id": "   ", "label": "positive"}', 422, "request_id must be the non-empty request id"),
    (b'{"request_id": "r", "label": "' + b"a" * 70_000 + b'"}', 413, "the limit is 64000"),
])
def test_feedback_hostile_bodies_get_a_clear_4xx_and_store_nothing(server, body, status, message):
    before = len(feedback_rows(server["log"]))
    r = httpx.post(server["url"] + "feedback", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert len(feedback_rows(server["log"])) == before


def test_feedback_needs_logged_texts(untrained_model, tmp_path, browser_page):
    running = serve(untrained_model, tmp_path / "log.sqlite", log_texts=False)
    try:
        p = httpx.post(running.url + "predict", json={"text": "a fine film"}, timeout=60).json()
        r = httpx.post(running.url + "feedback", json={"request_id": p["request_id"], "label": "negative"}, timeout=60)
        assert r.status_code == 409 and "does not keep texts (the demo runs with --no-log-texts)" in r.json()["error"], r.text
        assert feedback_rows(tmp_path / "log.sqlite") == []
        browser_page.goto(running.url)
        browser_page.get_by_text("Corrections need logged texts").first.wait_for()
        assert browser_page.locator("#send-correction").is_disabled()
    finally: running.close()


def test_browser_highlights_a_correction_the_log_and_monitor(server, browser_page, tmp_path):
    page, url, shots = browser_page, server["url"], os.environ.get("SENTIMENT_NB_DEMO_SCREENSHOTS")
    page.goto(url)
    review = REVIEWS[0] if shots else f"{REVIEWS[0]} ({uuid.uuid4().hex[:6]})"     # a fresh log for screenshots
    page.locator("#review textarea").fill(review)
    page.locator("#classify").click()
    label = page.locator("#prediction [data-testid=label-output-value]")
    label.wait_for()
    predicted = label.inner_text()
    words = page.locator("#words")
    words.get_by_text("wonderful").first.wait_for()                                   # the highlighted words
    assert "moving" in words.inner_text() and "brilliant" in words.inner_text()
    if shots: page.screenshot(path=str(Path(shots) / "predict_explain.png"), full_page=True)
    other = [c for c in server["labels"] if c != predicted][0]
    page.locator("#right-class").get_by_label(other).check()
    page.locator("#send-correction").click()
    page.get_by_text(f"correction saved: {other} (the model said {predicted})").wait_for()
    rid = [r for r in feedback_rows(server["log"]) if r[1] == other]
    assert rid, feedback_rows(server["log"])

    page.get_by_role("tab", name="Log").click()
    row = page.locator("#log .virtual-row", has_text=review[:40]).first          # Gradio 6's rendered table rows
    row.wait_for()
    cells = [c.strip() for c in row.locator(".body-cell").all_inner_texts()]
    assert cells[1:2] == [predicted] and other in cells, cells                      # label, then the correction column

    page.get_by_role("tab", name="Monitor").click()
    n = httpx.get(url + "health").json()["predictions_logged"]
    if n < 30: page.get_by_text("not enough predictions yet").first.wait_for()
    texts = [f"{REVIEWS[i % 5]} Take {i}." for i in range(max(0, 40 - n))]
    if texts: assert httpx.post(url + "predict", json={"texts": texts}, timeout=120).status_code == 200
    page.locator("#monitor-refresh").click()
    page.wait_for_function("() => /overall:|no reference to compare with/.test(document.querySelector('#monitor-verdict').innerText)",
                           timeout=120_000)
    if os.environ.get("SENTIMENT_NB_DEMO_MODEL") is None:         # the untrained model names no splits to compare with
        page.get_by_text("its training summary names no processed_dir").first.wait_for()
    else:
        page.get_by_text("overall:").first.wait_for()
        for check in ("predicted-class share", "confidence", "feedback disagreement"):
            page.locator("#monitor .virtual-row", has_text=check).first.wait_for()
    if shots: page.screenshot(path=str(Path(shots) / "monitor.png"), full_page=True)
