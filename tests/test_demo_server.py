"""The demo library's server in this process (`start_demo`, `run_demo`: uvicorn in a thread on a real loopback port)
and stage 04 run by papermill with its defaults after a pipeline run: what crosses a process or listens on a port
is tested here, not in the notebooks' inline tests."""
import dataclasses, json, shutil, socket, subprocess, threading

import httpx
import pytest

from conftest import BIN, ROOT

from sentiment_nb.app import DemoParams, free_port, run_demo, start_demo, wait_until_ready

SERVER_THREADS = ("demo-server", "model-scorer", "prediction-log")


def listening(port: int) -> bool:
    with socket.socket() as s: return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")   # uvicorn's thread exits on the taken port
def test_start_demo_listens_and_refuses_a_port_in_use(untrained_model, tmp_path):
    params = DemoParams(model_dir=str(untrained_model), prediction_log=str(tmp_path / "log.sqlite"), model_variant="int8")
    running = start_demo(params)
    try:
        assert running.url.startswith("http://127.0.0.1:"), running.url
        assert [wait_until_ready(running.url)[k] for k in ("run_id", "variant")] == ["untrained", "int8"]
        taken = dataclasses.replace(params, prediction_log=str(tmp_path / "l2.sqlite"), load_model_at_start=False,
                                    port=int(running.url.rsplit(":", 1)[1].strip("/")))
        with pytest.raises(OSError, match="is the port in use"): start_demo(taken)
    finally: running.close()
    assert not listening(int(running.url.rsplit(":", 1)[1].strip("/")))


@pytest.mark.parametrize("port", [99999, -1, 65536, "80"])
def test_start_demo_refuses_a_port_out_of_range(untrained_model, tmp_path, port):
    with pytest.raises(OSError, match="is not a TCP port: use 1-65535, or 0"):
        start_demo(DemoParams(model_dir=str(untrained_model), prediction_log=str(tmp_path / "l.sqlite"), port=port))


def test_run_demo_closes_the_server_on_every_path(untrained_model, tmp_path):
    port = free_port()
    params = DemoParams(model_dir=str(untrained_model), prediction_log=str(tmp_path / "log.sqlite"), model_variant="fp32",
                        port=port)
    with pytest.raises(httpx.HTTPStatusError, match="422"): run_demo(dataclasses.replace(params, check_text=""))
    assert not listening(port) and not [t.name for t in threading.enumerate() if t.name in SERVER_THREADS]
    seen = []
    result = run_demo(params, on_checked=lambda r: seen.append(httpx.get(r["url"] + "health").status_code))
    assert seen == [200] and result["check"]["run_id"] == "untrained" and "untrained" in result["card"], result
    assert (result["model_source"], result["model_note"]) == (str(untrained_model), None)
    assert not listening(port), "the demo still listens after a passed check"


def test_04_with_defaults_serves_the_newest_completed_run(untrained_model, tmp_path):
    "Issue 17 item 5: after `make run`, 04 with its defaults (an empty scratch run folder) serves the completed run's model and says so."
    reports = tmp_path / "reports"
    shutil.copytree(untrained_model, reports / "20261201-120000-abcd" / "model")
    (reports / "20261201-120000-abcd" / "manifest.json").write_text(json.dumps(
        {"stages": [{"stage": "02_training", "status": "ok"}]}))
    scratch = reports / "notebook"
    out = tmp_path / "04.ipynb"
    proc = subprocess.run([str(BIN / "papermill"), str(ROOT / "nbs" / "04_demo.ipynb"), str(out), "-p", "run_dir", str(scratch),
                           "-p", "model_variant", "fp32", "--cwd", str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    texts = [o.get("text", "") for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])]
    printed = "".join(t if isinstance(t, str) else "".join(t) for t in texts)
    model = reports / "20261201-120000-abcd" / "model"
    assert f"no model in {scratch / 'model'}: serving run untrained at {model} (the newest completed run's model)" in printed, printed
    summary = json.loads((scratch / "summaries" / "04_demo.json").read_text())
    assert json.dumps(summary).count("untrained") >= 1 and str(model) in json.dumps(summary), summary
    assert (scratch / "predictions.sqlite").exists()
