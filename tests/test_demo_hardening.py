"""The demo (04) attacked as issue 16 did, through real HTTP against `sentiment-nb serve` subprocesses, with and
without basic auth: server files offered as uploads to every route that takes a file, formula cells, blank rows,
bad JSON, a poisoned text among innocent ones, a model that fails to load, an out-of-range port."""
import asyncio, importlib.util, json, os, sys, time, uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import pandas as pd
import pytest

from conftest import ROOT, run_cli

_spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "bench_load.py")
bench = sys.modules["bench_load"] = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(bench)

TIMEOUT = 20              # a route that hangs on a device file or a FIFO fails the test instead of the suite
SECRET = f"TOP-SECRET-{uuid.uuid4().hex}"
PASSWD = "root:x:0:"


def auth_env(mode: str) -> tuple[dict, tuple[str, str] | None]:
    "The server's environment and the basic-auth credentials for one mode ('open' or 'auth')."
    if mode == "open": return {}, None
    creds = ("demo", f"pw-{uuid.uuid4().hex[:8]}")
    return {"SENTIMENT_NB_DEMO_USER": creds[0], "SENTIMENT_NB_DEMO_PASSWORD": creds[1]}, creds


def logged_in_client(url: str, creds) -> httpx.Client:
    "An HTTP client of the demo, logged in to the Gradio app when it has basic auth (the attacker is a user)."
    client = httpx.Client(base_url=url, timeout=TIMEOUT, auth=creds)
    if creds:
        assert httpx.post(url + "gradio_api/call/score_csv", json={"data": [None, "text"]}).status_code == 401
        assert client.post("/login", data={"username": creds[0], "password": creds[1]}).status_code == 200
    return client


def plant_files(base: Path, upload_dir: Path) -> dict:
    "Server files of several kinds an attacker may name as a file argument, by kind."
    elsewhere = base / "elsewhere"; elsewhere.mkdir()
    secret = elsewhere / "secret.csv"; secret.write_text(f"text\n{SECRET}\n", encoding="utf-8")
    in_tmp = base / "tmp" / "other" / "secret.csv"; in_tmp.parent.mkdir(); in_tmp.write_text(secret.read_text())
    planted = upload_dir / "planted"; planted.mkdir(parents=True)
    (planted / "link.csv").symlink_to(secret)
    (planted / "zero.csv").symlink_to("/dev/zero")
    os.mkfifo(elsewhere / "pipe.csv"); os.mkfifo(planted / "pipe.csv")
    return {"etc_passwd": "/etc/passwd", "csv_elsewhere": str(secret), "csv_in_server_tmp": str(in_tmp),
            "relative": os.path.relpath(secret, ROOT), "dotdot_out_of_uploads": f"{upload_dir}/../../elsewhere/secret.csv",
            "symlink_in_uploads": str(planted / "link.csv"), "dev_zero": "/dev/zero", "dev_urandom": "/dev/urandom",
            "dev_zero_link_in_uploads": str(planted / "zero.csv"), "fifo_elsewhere": str(elsewhere / "pipe.csv"),
            "fifo_in_uploads": str(planted / "pipe.csv"), "file_url": f"file://{secret}",
            "the_upload_dir": str(upload_dir)}


@pytest.fixture(scope="module", params=["open", "auth"])
def demo(request, untrained_model, tmp_path_factory):
    "A served demo (TMPDIR under the test's folder, so its Gradio upload dir is known) and planted server files."
    base = tmp_path_factory.mktemp(f"hardening-{request.param}")
    (base / "tmp").mkdir()
    env, creds = auth_env(request.param)
    port = bench.free_port()
    proc = bench.start_server(untrained_model, base / "predictions.sqlite", port, env={"TMPDIR": str(base / "tmp"), **env})
    url = f"http://127.0.0.1:{port}/"
    upload_dir = (base / "tmp" / "gradio").resolve()
    client = logged_in_client(url, creds)
    yield SimpleNamespace(url=url, base=base, tmp=base / "tmp", upload_dir=upload_dir, creds=creds, client=client,
                          attacks=plant_files(base, upload_dir), mode=request.param, proc=proc)
    client.close(); proc.terminate(); proc.wait(30)


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def call_score_csv(client: httpx.Client, file: dict, column: str = "text") -> str:
    "Everything the call API answers for the Batch tab's `score_csv` (the POST and its event stream)."
    r = client.post("/gradio_api/call/score_csv", json={"data": [file, column]})
    if r.status_code != 200: return r.text
    return r.text + client.get(f"/gradio_api/call/score_csv/{r.json()['event_id']}").text


def call_private_event(client: httpx.Client, api_name: str, data: list) -> tuple[bool, str]:
    "Run a UI-only event (hidden from the API docs but open to the queue) as the page does: success and all it sent."
    dep = next(d for d in client.get("/config").json()["dependencies"] if d["api_name"] == api_name)
    session = uuid.uuid4().hex
    r = client.post("/gradio_api/queue/join", json={"data": data, "fn_index": dep["id"], "session_hash": session,
                                                    "trigger_id": dep["targets"][0][0], "event_data": None})
    assert r.status_code == 200, r.text
    seen = []
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as s:
        for line in s.iter_lines():
            seen.append(line)
            if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                return json.loads(line[5:]).get("success") is True, "\n".join(seen)
    return False, "\n".join(seen)


def get_file(client: httpx.Client, path: str, route: str = "file=") -> httpx.Response:
    "GET Gradio's file route for `path`, dots percent-encoded so that `..` reaches the server as sent."
    return client.get(f"/gradio_api/{route}" + path.replace(".", "%2E"))


def files_with_content(tmp: Path, skip: Path) -> dict:
    "Non-empty regular files under the server's temp dir (outside `skip`), with their sizes."
    return {p: p.stat().st_size for p in tmp.rglob("*")
            if not p.is_symlink() and p.is_file() and p.stat().st_size and not p.is_relative_to(skip)}


def assert_nothing_read(demo, before: dict, answer: str) -> None:
    "No secret in the answer, no copy in the temp dir, and the server still answers /health at once."
    assert SECRET not in answer and PASSWD not in answer, answer[:2000]
    new = {p: s for p, s in files_with_content(demo.tmp, demo.upload_dir / "planted").items() if p not in before}
    assert not new, f"files were copied into the server's temp dir: {new}"
    t0 = time.monotonic()
    assert httpx.get(demo.url + "health", timeout=TIMEOUT).status_code == 200
    assert time.monotonic() - t0 < 2, "the server is slow to answer after the attack"


KINDS = ["etc_passwd", "csv_elsewhere", "csv_in_server_tmp", "relative", "dotdot_out_of_uploads",
         "symlink_in_uploads", "dev_zero", "dev_urandom", "dev_zero_link_in_uploads", "fifo_elsewhere",
         "fifo_in_uploads", "file_url", "the_upload_dir"]


@pytest.mark.parametrize("kind", KINDS)
def test_score_csv_reads_no_server_file(demo, kind):
    before = files_with_content(demo.tmp, demo.upload_dir / "planted")
    answer = call_score_csv(demo.client, file_data(demo.attacks[kind]))
    assert "event: complete" not in answer, answer
    assert_nothing_read(demo, before, answer)


@pytest.mark.parametrize("kind", KINDS)
def test_the_upload_event_reads_no_server_file(demo, kind):
    "The upload box's change event (it lists the CSV's columns) is callable through the queue as the page calls it."
    before = files_with_content(demo.tmp, demo.upload_dir / "planted")
    ok, answer = call_private_event(demo.client, "columns_of", [file_data(demo.attacks[kind])])
    assert not ok, answer
    assert_nothing_read(demo, before, answer)


@pytest.mark.parametrize("route", ["file=", "file/"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_file_route_serves_no_server_file(demo, kind, route):
    before = files_with_content(demo.tmp, demo.upload_dir / "planted")
    r = get_file(demo.client, demo.attacks[kind], route)
    assert r.status_code in (403, 404), (r.status_code, r.text[:300])
    assert_nothing_read(demo, before, r.text)


def upload(client: httpx.Client, name: str, content: bytes) -> str:
    "A file sent through the app's own upload route, as the page sends it; its path on the server."
    r = client.post("/gradio_api/upload", files={"files": (name, content)})
    assert r.status_code == 200, r.text
    return r.json()[0]


def test_an_upload_is_scored_one_row_per_input_row_without_formulas(demo):
    "The legitimate path still works: blank rows keep their row and a reason, formula cells are neutralised."
    rows = ["=HYPERLINK(\"http://x\",\"click\")", "", "great fun", "   ", "+1 boring", "@SUM(A1)", "-2 so-so"]
    quoted = ['"' + r.replace('"', '""') + '"' if '"' in r else r for r in rows]       # blank lines stay blank
    path = upload(demo.client, "reviews.csv", ("text\n" + "\n".join(quoted) + "\n").encode())
    ok, columns = call_private_event(demo.client, "columns_of", [file_data(path)])
    assert ok and '"text"' in columns, columns
    answer = call_score_csv(demo.client, file_data(path))
    assert "event: complete" in answer and "scored 5 of 7 rows; 2 empty" in answer, answer
    scored = json.loads(answer.split("event: complete\ndata:", 1)[1].strip().splitlines()[0])[0]
    r = demo.client.get(scored["url"])
    assert r.status_code == 200
    out = pd.read_csv(pd.io.common.StringIO(r.text), dtype=str, keep_default_na=False)
    assert list(out.columns) == ["text", "label", "confidence", "truncated", "reason"]
    assert out["text"].tolist() == ["'" + rows[0], "", "great fun", "   ", "'+1 boring", "'@SUM(A1)", "'-2 so-so"]
    assert [bool(l) for l in out["label"]] == [True, False, True, False, True, True, True]
    assert out["reason"].tolist() == ["", "empty or only whitespace", "", "empty or only whitespace", "", "", ""]


def test_an_uploaded_svg_is_never_served_inline(demo):
    "Offering an uploaded SVG to the CSV input must not mark it as a static file the browser renders (stored XSS)."
    path = upload(demo.client, "x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    call_score_csv(demo.client, file_data(path))
    r = get_file(demo.client, path)
    assert not (r.status_code == 200 and "svg" in r.headers.get("content-type", "")
                and "inline" in r.headers.get("content-disposition", "inline")), r.headers


def test_health_shows_no_path(demo, untrained_model):
    r = httpx.get(demo.url + "health", timeout=TIMEOUT)
    h = r.json()
    assert (r.status_code, h["status"], h["run_id"]) == (200, "ok", "untrained") and h["variant"]
    assert str(untrained_model) not in r.text and "model_dir" not in h and "model_source" not in h, h


@pytest.mark.parametrize("body", [b"[" * 100_000, b"1" * 5000, b'{"text": ' + b"[" * 100_000,
                                  b'{"texts": [' + b"9" * 5000 + b"]}", b'{"text": "a", "n": 1' + b"0" * 5000 + b"}"])
def test_an_unreadable_json_body_gets_400_json(demo, body):
    r = demo.client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), (r.status_code, r.text[:300])
    assert "the body is not valid UTF-8 JSON" in r.json()["error"]


def test_a_poisoned_text_fails_only_its_own_request(demo):
    "30 innocent clients and 10 sending a lone surrogate at the same time: only the 10 get a 4xx, naming it."
    async def go():
        async with httpx.AsyncClient(base_url=demo.url, timeout=60, auth=demo.creds) as c:
            innocent = [c.post("/predict", json={"texts": [f"a fine film {i}", "dull"]}) for i in range(30)]
            poisoned = [c.post("/predict", content=b'{"texts": ["ok", "x \\ud800 y"]}',
                               headers={"content-type": "application/json"}) for _ in range(10)]
            return await asyncio.gather(*innocent, *poisoned)
    answers = asyncio.run(go())
    assert [r.status_code for r in answers[:30]] == [200] * 30, [r.text for r in answers[:30] if r.status_code != 200][:2]
    assert {r.status_code for r in answers[30:]} == {422}
    assert all("texts[1] is not valid Unicode: a lone surrogate" in r.json()["error"] for r in answers[30:])


@pytest.mark.parametrize("mode", ["open", "auth"])
def test_a_model_that_fails_to_load_is_reported(untrained_model, tmp_path, mode):
    "A lazy demo whose model folder is gone by the first request: /health says error (503), /predict keeps the cause."
    import shutil
    model = tmp_path / "model"; shutil.copytree(untrained_model, model)
    env, creds = auth_env(mode)
    port = bench.free_port()
    proc = bench.start_server(model, tmp_path / "predictions.sqlite", port, "--lazy", env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        shutil.rmtree(model)
        r = httpx.post(url + "predict", json={"text": "good"}, auth=creds, timeout=60)
        assert r.status_code == 503 and r.json()["error"] and "no model at" in r.json()["error"], r.text
        h = httpx.get(url + "health", timeout=TIMEOUT)
        assert (h.status_code, h.json()["status"], h.json()["model_state"]) == (503, "error", "failed"), h.text
        if creds:            # anyone may ask /health: without the login it names no path
            assert str(model) not in h.text and h.json()["error"], h.text
            assert "no model at" in httpx.get(url + "health", auth=creds, timeout=TIMEOUT).json()["error"]
        else: assert "no model at" in h.json()["error"]
    finally:
        proc.terminate(); proc.wait(30)


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_serve_refuses_a_port_out_of_range(untrained_model, port):
    proc = run_cli("serve", "--model", untrained_model, "--port", port, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"port {port} is not a TCP port: use 1-65535, or 0 to pick a free one" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "in use" not in proc.stderr
