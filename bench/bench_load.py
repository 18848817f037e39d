"""Load test of the demo's HTTP API: C concurrent clients send N `POST /predict` requests to 127.0.0.1.

Reports errors, throughput and p50/p95/p99 latency, then opens the demo's SQLite prediction log and checks
that every acknowledged prediction (an HTTP 200 with a request id) is in it. Exit status 1 when any request
failed or any acknowledged prediction is missing from the log: the project's bar is 0 and 0 at 200 clients.

    .venv/bin/python bench/bench_load.py --model reports/<run-id>/model            # starts `sentiment-nb serve`
    .venv/bin/python bench/bench_load.py --url http://127.0.0.1:7860/ --log reports/predictions.sqlite
"""
from __future__ import annotations
import argparse, asyncio, base64, json, os, socket, sqlite3, subprocess, sys, tempfile, time
from urllib.parse import urlsplit
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ["A warm, funny and beautifully acted film.", "Dull, predictable and far too long.",
           "The cast is great but the script lets them down badly in the last act.",
           "Oh great, another sequel nobody asked for.", "I laughed, I cried, I bought the soundtrack.",
           "Two hours I will never get back, with a plot that makes no sense at all and wooden dialogue throughout."]


@dataclass
class LoadResult:
    "What a load run saw: latencies of answered requests, acknowledged request ids, errors."
    latencies_ms: list = field(default_factory=list)
    server_ms: list = field(default_factory=list)
    model_ms: list = field(default_factory=list)
    acked: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, clients: int) -> dict:
        "Counts, throughput and latency percentiles."
        lat = np.asarray(self.latencies_ms or [float("nan")])
        pct = lambda xs, q: round(float(np.percentile(np.asarray(xs or [float("nan")]), q)), 1)
        return {"clients": clients, "requests": len(self.acked) + len(self.errors), "acknowledged": len(self.acked),
                "errors": len(self.errors), "seconds": round(self.seconds, 2),
                "requests_per_s": round(len(self.acked) / max(self.seconds, 1e-9), 1),
                **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)},
                "max_ms": round(float(lat.max()), 1),
                "server_p50_ms": pct(self.server_ms, 50), "model_p50_ms": pct(self.model_ms, 50),
                "first_errors": self.errors[:5]}


async def post_json(reader, writer, host: str, path: str, payload: dict, auth: str = "") -> tuple[int, bytes]:
    "One HTTP/1.1 keep-alive POST on an open connection: (status, body). A raw client costs far less CPU than httpx."
    body = json.dumps(payload).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n{auth}\r\n".encode() + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length": length = int(value)
    return status, await reader.readexactly(length)


async def run_load(url: str, clients: int, total: int, result: LoadResult | None = None,
                   stop_on_error: bool = False, timeout: float = 120, auth: tuple[str, str] | None = None) -> LoadResult:
    "Send `total` single-text requests over `clients` concurrent connections; fill and return `result`."
    result, counter = result or LoadResult(), iter(range(total))
    u = urlsplit(url)
    path = (u.path.rstrip("/") or "") + "/predict"
    header = f"Authorization: Basic {base64.b64encode(':'.join(auth).encode()).decode()}\r\n" if auth else ""

    async def client():
        conn = None
        for i in counter:
            if stop_on_error and result.errors: break
            t0 = time.perf_counter()
            try:
                conn = conn or await asyncio.wait_for(asyncio.open_connection(u.hostname, u.port), timeout)
                status, body = await asyncio.wait_for(
                    post_json(*conn, u.netloc, path, {"text": f"{REVIEWS[i % len(REVIEWS)]} #{i}"}, header), timeout)
                if status != 200: result.errors.append(f"HTTP {status}: {body[:200]!r}"); continue
                answer = json.loads(body)
                result.acked.append(answer["request_id"])
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)
                result.server_ms.append(answer["processing_ms"]); result.model_ms.append(answer["model_ms"])
            except (OSError, EOFError, ValueError, IndexError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                result.errors.append(f"{type(e).__name__}: {e}")
                if conn: conn[1].close()
                conn = None
        if conn: conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.seconds = time.perf_counter() - t0
    return result


def missing_from_log(log_path: str | Path, request_ids: list[str]) -> list[str]:
    "Acknowledged request ids that the prediction log does not hold (opening it recovers its WAL)."
    con = sqlite3.connect(str(log_path), timeout=30)
    try:
        logged = {r[0] for r in con.execute("SELECT request_id FROM predictions")}
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"{log_path} is corrupt"
    finally: con.close()
    return [r for r in request_ids if r not in logged]


def free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def start_server(model: str, log_path: str | Path, port: int, *extra: str, env: dict | None = None,
                 timeout: float = 180) -> subprocess.Popen:
    "`sentiment-nb serve` in a subprocess, returned once `/health` says the model is ready."
    cmd = [str(Path(sys.executable).parent / "sentiment-nb"), "serve", "--model", str(model), "--port", str(port),
           "--log", str(log_path), *extra]
    out = open(Path(log_path).with_suffix(".out"), "w")   # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                            stdout=out, stderr=subprocess.STDOUT, text=True)
    proc.output_path = Path(out.name)
    wait_ready(f"http://127.0.0.1:{port}/", proc, timeout, "--lazy" not in extra)
    return proc


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, model_loaded: bool = True) -> dict:
    "Poll /health until it answers (and the model is ready, unless `model_loaded` is False)."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.returncode}:\n{proc.output_path.read_text()[-3000:]}")
        try:
            h = httpx.get(url + "health", timeout=5).json()
            if h["model_state"] == "ready" or not model_loaded: return h
        except httpx.HTTPError: pass
        time.sleep(0.3)
    proc.kill(); raise TimeoutError(f"the server at {url} was not ready after {timeout} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder or run id: starts `sentiment-nb serve` on a free loopback port")
    ap.add_argument("--url", help="a running demo instead (needs --log)")
    ap.add_argument("--log", help="the running demo's prediction log (SQLite)")
    ap.add_argument("--clients", type=int, default=200, help="concurrent connections")
    ap.add_argument("--requests", type=int, default=4000, help="requests in all")
    ap.add_argument("--json", help="also write the summary to this JSON file")
    a = ap.parse_args(argv)
    if bool(a.model) == bool(a.url): ap.error("give either --model or --url (with --log)")
    if a.url and not a.log: ap.error("--url needs --log, the demo's prediction log")
    proc, tmp = None, tempfile.TemporaryDirectory(prefix="bench-load-")
    url, log_path = a.url, a.log
    if a.model:
        port, log_path = free_port(), Path(tmp.name) / "predictions.sqlite"
        proc, url = start_server(a.model, log_path, port), f"http://127.0.0.1:{port}/"
    try:
        result = asyncio.run(run_load(url, a.clients, a.requests))
        summary = {**result.summary(a.clients), "missing_from_log": len(missing_from_log(log_path, result.acked))}
    finally:
        if proc: proc.terminate(); proc.wait(30)
        tmp.cleanup()
    print(json.dumps(summary, indent=2))
    if a.json: Path(a.json).write_text(json.dumps(summary, indent=2))
    return 1 if summary["errors"] or summary["missing_from_log"] else 0


if __name__ == "__main__":
    sys.exit(main())
