"""Load test of the demo's HTTP API: C concurrent clients send N `POST /predict` requests to 127.0.0.1.

Reports errors, throughput and p50/p95/p99 latency, then opens the demo's SQLite prediction log and checks
that every acknowledged prediction (an HTTP 200 with a request id) is in it. With `--model` it also measures
the raw batch rate of the variant the server serves (`infer.predict` over the same texts, in the same run,
with the server stopped) and the served fraction (requests/s over texts/s), and appends one row per load
run to `bench/results/load.jsonl`. Exit status 1 when any request failed or any acknowledged prediction is
missing from the log: the project's bar is 0 and 0 at 200 clients.

    .venv/bin/python bench/bench_load.py --model reports/<run-id>/model            # starts `sentiment-nb serve`
    .venv/bin/python bench/bench_load.py --model M --baseline HEAD~1 --rounds 2     # before/after, interleaved
    .venv/bin/python bench/bench_load.py --url http://127.0.0.1:7860/ --log reports/predictions.sqlite

`--baseline REV|DIR` serves the `sentiment_nb` package of a git revision (read with `git archive`) or of a
folder holding a copy of it, alternating with this checkout's code (`current`), each a fresh server.
"""
from __future__ import annotations
import argparse, asyncio, base64, json, os, signal, socket, sqlite3, subprocess, sys, tempfile, time
from urllib.parse import urlsplit
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))        # also when loaded by path (the tests do)
from bench_accuracy import git_commit          # the checkout's commit, `+dirty` when nbs/, sentiment_nb/ or params/ differ
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
                    post_json(*conn, u.netloc, path, {"text": request_text(i)}, header), timeout)
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


def request_text(i: int) -> str:
    "The text of request `i` (the raw batch rate scores the same texts)."
    return f"{REVIEWS[i % len(REVIEWS)]} #{i}"


def hide_packages(dest: Path, names: list[str]) -> Path:
    "A folder (first on the baseline's PYTHONPATH) where importing `names` raises ImportError, as if not installed."
    for n in names:
        (dest / n).mkdir(parents=True, exist_ok=True)
        (dest / n / "__init__.py").write_text(f"raise ImportError('{n} is hidden by bench_load --baseline')\n")
    return dest


def baseline_code(spec: str, dest: Path) -> Path:
    "A folder whose `sentiment_nb` package is the baseline: `spec` itself when it holds one, else `git archive spec`."
    if Path(spec).is_dir():                     # a folder holding sentiment_nb/, or sentiment_nb/ itself
        for d in (Path(spec), Path(spec).parent):
            if d.name != "sentiment_nb" and (d / "sentiment_nb" / "app.py").exists(): return d.resolve()
        raise SystemExit(f"--baseline {spec!r} is a folder without sentiment_nb/app.py")
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", spec, "sentiment_nb"], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"--baseline {spec!r} is neither a folder holding sentiment_nb/ nor a git revision: "
                         f"{archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


_models: dict = {}

def batch_rate(model: str, variant: str, texts: list[str], batch_size: int = 32) -> tuple[float, float]:
    "Texts/s and CPU ms per text of `infer.predict` on `texts` in one call (the served variant), after a warm-up."
    sys.path.insert(0, str(ROOT))
    from sentiment_nb import infer
    if (model, variant) not in _models: _models[model, variant] = infer.load_model(model, variant=variant)
    m = _models[model, variant]
    infer.predict(m, texts[:64], batch_size)
    t0, c0 = time.perf_counter(), time.process_time()
    infer.predict(m, texts, batch_size)
    return len(texts) / (time.perf_counter() - t0), (time.process_time() - c0) * 1000 / len(texts)


def profile_server(pid: int, out: Path, gil: bool = False) -> subprocess.Popen:
    "py-spy sampling the server (every thread, or only the one holding the GIL; collapsed stacks) until it stops."
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists(): raise SystemExit(f"--profile needs py-spy: {spy} is missing (.venv/bin/pip install py-spy)")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--format", "raw", "--threads", "--rate", "200",
                             "--nonblocking", *(["--gil"] if gil else []), "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def cpu_seconds(pid: int) -> float:
    "User plus system CPU seconds a process has used so far (every thread)."
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_run(config: str, code: list[Path] | None, revision: str | None, a, tmp: Path, n: int) -> dict:
    "One load run against a fresh server of `config` (`code` first on its PYTHONPATH), between two raw batch rates."
    port, log_path = free_port(), tmp / f"{config}-{n}.sqlite"
    env = {"PYTHONPATH": os.pathsep.join(map(str, code))} if code else None
    proc = start_server(a.model, log_path, port, *a.server_args, env=env)
    url, spy, texts = f"http://127.0.0.1:{port}/", None, [request_text(i) for i in range(a.batch_texts)]
    try:
        variant = httpx.get(url + "health", timeout=10).json()["variant"]
        asyncio.run(run_load(url, min(a.clients, 20), 2 * min(a.clients, 20)))     # warm-up, not counted
        rate_before, cpu_before = batch_rate(a.model, variant, texts, a.batch_size)   # the server idles meanwhile
        if a.profile:
            Path(a.profile).mkdir(parents=True, exist_ok=True)
            spy = profile_server(proc.pid, Path(a.profile) / f"{config}-{n}.txt", a.profile_gil)
        load_start, cpu0, own0 = os.getloadavg(), cpu_seconds(proc.pid), time.process_time()
        result = asyncio.run(run_load(url, a.clients, a.requests))
        load_end, server_cpu, client_cpu = os.getloadavg(), cpu_seconds(proc.pid) - cpu0, time.process_time() - own0
        if spy: spy.send_signal(signal.SIGINT); spy.wait(30)        # py-spy writes its file on SIGINT
        rate_after, cpu_after = batch_rate(a.model, variant, texts, a.batch_size)
    finally:
        proc.terminate(); proc.wait(30)
        if spy and spy.poll() is None: spy.kill()
    summary = {**result.summary(a.clients), "missing_log_rows": len(missing_from_log(log_path, result.acked))}
    rate, done = (rate_before + rate_after) / 2, max(summary["acknowledged"], 1)
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": config,
            "code": os.pathsep.join(map(str, code or [ROOT])), "revision": revision, "variant": variant, **summary,
            "batch_texts_per_s": round(rate, 1), "batch_texts_per_s_before_after": [round(rate_before, 1), round(rate_after, 1)],
            "served_fraction": round(summary["requests_per_s"] / rate, 3),
            "batch_cpu_ms_per_text": round((cpu_before + cpu_after) / 2, 2),
            "server_cpu_ms_per_request": round(server_cpu * 1000 / done, 2),
            "client_cpu_ms_per_request": round(client_cpu * 1000 / done, 2),
            "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in load_end],
            "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder or run id: starts `sentiment-nb serve` on a free loopback port")
    ap.add_argument("--url", help="a running demo instead (needs --log)")
    ap.add_argument("--log", help="the running demo's prediction log (SQLite)")
    ap.add_argument("--clients", type=int, default=200, help="concurrent connections")
    ap.add_argument("--requests", type=int, default=4000, help="requests in all, per load run")
    ap.add_argument("--baseline", help="git revision or folder holding sentiment_nb/: its server alternates with this code's")
    ap.add_argument("--baseline-without", nargs="*", default=[], metavar="PACKAGE",
                    help="packages the baseline's server runs without (e.g. uvloop httptools, to measure what adding them did)")
    ap.add_argument("--rounds", type=int, default=1, help="load runs per configuration, interleaved")
    ap.add_argument("--batch-texts", type=int, default=2000, help="texts for the raw batch rate (the requests' texts)")
    ap.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (the server's predict_batch_size)")
    ap.add_argument("--server-args", nargs=argparse.REMAINDER, default=[], help="passed on to `sentiment-nb serve`")
    ap.add_argument("--profile", help="folder for py-spy collapsed stacks of the server, one file per load run")
    ap.add_argument("--profile-gil", action="store_true", help="sample only the thread holding the GIL")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "load.jsonl"), help="JSONL file rows are appended to")
    ap.add_argument("--json", help="also write the summary (the rows) to this JSON file")
    a = ap.parse_args(argv)
    if bool(a.model) == bool(a.url): ap.error("give either --model or --url (with --log)")
    if a.url and not a.log: ap.error("--url needs --log, the demo's prediction log")
    if a.url and (a.baseline or a.profile): ap.error("--baseline and --profile need --model (they start the servers)")
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        if a.url:
            result = asyncio.run(run_load(a.url, a.clients, a.requests))
            rows = [{**result.summary(a.clients), "missing_log_rows": len(missing_from_log(a.log, result.acked))}]
        else:
            without = f" without {' '.join(a.baseline_without)}" if a.baseline_without else ""
            configs = [("baseline", [hide_packages(Path(tmp) / "hidden", a.baseline_without), baseline_code(a.baseline, Path(tmp) / "baseline")],
                        a.baseline + without)] if a.baseline else []
            configs.append(("current", None, git_commit()))
            rows = []
            for n in range(a.rounds):
                for config, code, revision in configs:
                    rows.append(row := load_run(config, code, revision, a, Path(tmp), n))
                    print(json.dumps(row), flush=True)
                    with open(a.results, "a") as f: f.write(json.dumps(row) + "\n")
    if len(rows) > 1: print(json.dumps(comparison(rows), indent=2))
    else: print(json.dumps(rows[0], indent=2))
    if a.json: Path(a.json).write_text(json.dumps(rows, indent=2))
    return 1 if any(r["errors"] or r["missing_log_rows"] for r in rows) else 0


def comparison(rows: list[dict]) -> dict:
    "Per configuration: medians over its runs of requests/s, served fraction and p50/p95/p99."
    keys = ("requests_per_s", "batch_texts_per_s", "served_fraction", "p50_ms", "p95_ms", "p99_ms")
    return {c: {"runs": len(rs), **{k: round(float(np.median([r[k] for r in rs])), 3) for k in keys}}
            for c in dict.fromkeys(r["config"] for r in rows) for rs in [[r for r in rows if r["config"] == c]]}


if __name__ == "__main__":
    sys.exit(main())
