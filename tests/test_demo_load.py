"""The serving path under concurrency: the prediction log's group commits (every row kept, each caller answered
only after its row is committed, a close mid-batch loses nothing) and a real in-process server (uvicorn on a
loopback port) whose requests do not fail because other clients went away."""
import asyncio, concurrent.futures as cf, sqlite3, threading, time
from contextlib import closing

import httpx
import pytest

from sentiment_nb.app import DemoParams, PredictionLog, open_log_db, prediction_rows, start_demo, wait_until_ready


def rows_of(n: int, tag: str) -> list[list[dict]]:
    "One single-row request per item, each with a fresh request id."
    return [prediction_rows([f"{tag} {i}"], [{"label": "positive", "confidence": 0.9}], [False], "test", "r", 1.0)
            for i in range(n)]


def logged_ids(path) -> set:
    "Request ids committed to the log, read through a connection of its own."
    with closing(open_log_db(path)) as con: return {r[0] for r in con.execute("SELECT request_id FROM predictions")}


def hold_write_lock(path) -> sqlite3.Connection:
    "Another connection holding the log's write lock: no commit of the writer can land until it lets go."
    blocker = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_group_commit_keeps_every_row_and_answers_only_after_commit(tmp_path):
    plog = PredictionLog(tmp_path / "log.sqlite")
    requests, seen_at_answer = rows_of(300, "t"), {}

    async def one(rows):
        await plog.submit(rows, asyncio.get_running_loop())
        seen_at_answer[rows[0]["request_id"]] = rows[0]["request_id"] in logged_ids(plog.path)

    async def main():
        blocker = hold_write_lock(plog.path)
        tasks = [asyncio.create_task(one(r)) for r in requests]
        await asyncio.sleep(1.0)
        answered_while_locked = sum(t.done() for t in tasks)
        blocker.rollback(); blocker.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return answered_while_locked

    try: assert asyncio.run(main()) == 0                          # nothing answered before its commit could land
    finally: plog.close()
    assert len(seen_at_answer) == 300 and all(seen_at_answer.values())   # each row visible when its caller heard back
    assert logged_ids(plog.path) == {r[0]["request_id"] for r in requests}
    with closing(open_log_db(plog.path)) as con:
        assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 300   # each row once


def test_close_mid_batch_commits_every_queued_row(tmp_path):
    plog = PredictionLog(tmp_path / "log.sqlite")
    blocker = hold_write_lock(plog.path)
    futures = [plog.submit(r) for r in rows_of(200, "c")]       # queued behind the lock (concurrent futures)
    closer = threading.Thread(target=plog.close); closer.start()
    time.sleep(0.5)
    assert not any(f.done() for f in futures)
    blocker.rollback(); blocker.close(); closer.join(60)
    assert [f.result(1) for f in futures] == [1] * 200
    assert plog.count() == 200


def test_a_refused_row_fails_only_its_own_caller(tmp_path):
    plog = PredictionLog(tmp_path / "log.sqlite")
    bad = rows_of(1, "b")[0][0] | {"confidence": None}           # NOT NULL: the shared transaction is refused
    good = rows_of(5, "g")

    async def main():
        loop = asyncio.get_running_loop()
        blocker = hold_write_lock(plog.path)                     # so that all six wait for the same round
        futs = [plog.submit(r, loop) for r in good[:3]] + [plog.submit([bad], loop)] + [plog.submit(r, loop) for r in good[3:]]
        await asyncio.sleep(0.3); blocker.rollback(); blocker.close()
        return await asyncio.gather(*futs, return_exceptions=True)

    try: results = asyncio.run(main())
    finally: plog.close()
    assert results[:3] + results[4:] == [1] * 5 and isinstance(results[3], sqlite3.IntegrityError), results
    assert logged_ids(plog.path) == {r[0]["request_id"] for r in good}


@pytest.fixture(scope="module")
def server(untrained_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("load")
    running = start_demo(DemoParams(model_dir=str(untrained_model), prediction_log=str(d / "log.sqlite"),
                                    model_variant="fp32"))
    wait_until_ready(running.url)
    yield running
    running.close()


def test_the_server_runs_on_httptools_and_uvloop(server):
    "The fast HTTP parser and event loop are installed and picked (uvicorn falls back to h11 and asyncio silently)."
    import uvloop  # noqa: F401  (the dependency must be installed)
    assert server.server.config.http_protocol_class.__name__ == "HttpToolsProtocol"
    loop = server.server.config.get_loop_factory()()
    try: assert type(loop).__module__.startswith("uvloop"), type(loop)
    finally: loop.close()


def test_requests_do_not_fail_because_other_clients_went_away(server):
    url = server.url + "predict"

    async def gone(i):                                    # sends a request and hangs up before the answer
        r, w = await asyncio.open_connection("127.0.0.1", int(server.url.rsplit(":", 1)[1].strip("/")))
        body = b'{"text": "gone %d"}' % i
        w.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body))
        await w.drain(); w.close()

    async def main():
        async with httpx.AsyncClient(timeout=120) as client:
            answers = await asyncio.gather(*(client.post(url, json={"text": f"kept {i}"}) for i in range(100)),
                                           *(gone(i) for i in range(50)))
        return answers[:100]

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200] * 100, [a.text for a in answers if a.status_code != 200][:3]
    assert {a.json()["request_id"] for a in answers} <= logged_ids(server.demo.log.path)
    assert httpx.get(server.url + "health", timeout=10).json()["model_state"] == "ready"
