"""`sentiment-nb predict --engine ray` on a real Ray (127.0.0.1, 2 CPUs) and the real CLI: the same rows as
`--engine local`, S3 in and out (SeaweedFS), bad input named, a killed job rerun to completion, no process left.
One Ray cluster per module (started here, in this process); the CLI joins it with `--address`, except the rerun
after a kill, which starts and stops a Ray of its own."""
import os, signal, subprocess, time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from conftest import BIN, ROOT, run_cli
from s3_server import s3  # noqa: F401  (the module's local S3 server)

WORDS = "good bad great awful fine dull moving boring fun slow warm flat sharp tired bright".split()


def corpus(n: int, seed: int = 0) -> pd.DataFrame:
    "n rows of short generated reviews (a few empty ones and an 'NA') with an id and a number column."
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, rng.integers(2, 9))) for _ in range(n)]
    texts[3], texts[7], texts[11] = "", "   ", "NA"
    return pd.DataFrame({"id": np.arange(n) + 1000, "text": texts, "stars": rng.integers(1, 6, n)})


def parts(out: Path) -> pd.DataFrame:
    "Every part of an output folder, in input order (file, then row)."
    files = sorted(p for p in Path(out).glob("*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in files]).sort_values(["input_file", "input_row"]).reset_index(drop=True)


def same_rows(ray_out: pd.DataFrame, local: pd.DataFrame) -> None:
    "The Ray output equals `--engine local`'s row for row: input columns, labels, notes; probabilities within 1e-5."
    assert len(ray_out) == len(local)
    for col in local.columns:
        if col.startswith("p_") or col == "confidence":
            np.testing.assert_allclose(ray_out[col].astype(float), local[col].astype(float), atol=1e-5, err_msg=col)
        else:
            assert ray_out[col].fillna("").tolist() == local[col].fillna("").tolist(), col


def session_processes(sid: int) -> list[psutil.Process]:
    "Live processes of a session (what a CLI started with start_new_session leaves)."
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE: out.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError): pass
    return out


def scorer_processes() -> list[psutil.Process]:
    "Live block-scoring actors of the in-process cluster (Ray titles them `ray::MapWorker(MapBatches(BlockScorer))`)."
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "BlockScorer" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE: out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied): pass
    return out


@pytest.fixture(scope="module")
def cluster(s3):
    "A Ray of 2 CPUs on 127.0.0.1 in this process, its workers seeing the local S3 server; stopped, with every process it started."
    import ray
    from sentiment_nb.ray_scoring import start_local_ray
    saved = {k: os.environ.get(k) for k in s3.env()}
    os.environ.update(s3.env())
    before = {p.pid for p in psutil.Process().children(recursive=True)}    # the S3 server's process is not Ray's
    start_local_ray(2, _node_ip_address="127.0.0.1")
    address = ray.get_runtime_context().gcs_address
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    yield address
    ray.shutdown()
    for k, v in saved.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"Ray left processes behind: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory, untrained_model):
    "5,000 rows as one CSV and as a folder of 3 parquet files, and `--engine local`'s scoring of the CSV."
    d = tmp_path_factory.mktemp("ray-data")
    df = corpus(5000)
    df.to_csv(d / "corpus.csv", index=False)
    (d / "pq").mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[chunk].to_parquet(d / "pq" / f"part-{i}.parquet", index=False, row_group_size=700)
    run_cli("predict", "--file", d / "corpus.csv", "--out", d / "local.parquet", "--model", untrained_model, "--variant", VARIANT,
            timeout=900, check=True, env={"SENTIMENT_NB_NO_PROGRESS": "1"})
    return {"dir": d, "df": df, "local": pd.read_parquet(d / "local.parquet")}


# fp32 ONNX in both engines: dynamic int8 quantizes activations per batch, so its probabilities depend on which texts
# share a batch (the engines batch differently) and could not agree within 1e-5; the model path is the same.
VARIANT = "onnx"


def ray_predict(*args, address=None, env=None, timeout=900):
    "`sentiment-nb predict --engine ray ARGS` (joining `address` when given)."
    extra = ["--address", address] if address else []
    return run_cli("predict", "--engine", "ray", *args, *extra, "--variant", VARIANT, timeout=timeout,
                   env={"SENTIMENT_NB_NO_PROGRESS": "1", **(env or {})})


def test_csv_and_parquet_folder_equal_the_local_engine(cluster, data, untrained_model, tmp_path):
    local = data["local"]
    proc = ray_predict(data["dir"] / "corpus.csv", "--out", tmp_path / "csv", "--model", untrained_model, address=cluster)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"model: run untrained at {untrained_model} ({VARIANT})" in proc.stderr
    assert "5000 rows -> " in proc.stderr and "0 failed" in proc.stderr and "2 rows not scored" in proc.stderr   # "" and "   "; "NA" is a text
    out = parts(tmp_path / "csv")
    assert out["input_row"].tolist() == list(range(5000))                      # order recoverable
    same_rows(out.drop(columns=["input_file", "input_row"]), local)
    assert (tmp_path / "csv" / "_SUCCESS").exists()

    proc = ray_predict(data["dir"] / "pq", "--out", tmp_path / "pq", "--model", untrained_model, "--block-rows", "1000",
                       "--num-actors", "2", address=cluster)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = parts(tmp_path / "pq")
    assert len(list((tmp_path / "pq").glob("*.parquet"))) == 6                 # 1667/1667/1666 rows: 2 blocks each
    assert list(out.columns[:3]) == ["id", "text", "stars"]                    # every input column kept
    same_rows(out.drop(columns=["input_file", "input_row"]), local)


def test_s3_input_and_output(cluster, s3, untrained_model, tmp_path):
    client = s3.client()
    client.create_bucket(Bucket="ray-corpus")
    df = corpus(600, seed=1)
    for i in (0, 1):
        local = tmp_path / f"in-{i}.parquet"
        df.iloc[i * 300:(i + 1) * 300].to_parquet(local, index=False)
        client.upload_file(str(local), "ray-corpus", f"in/part-{i}.parquet")
    proc = ray_predict("s3://ray-corpus/in", "--out", "s3://ray-corpus/scored", "--model", untrained_model,
                       "--block-rows", "200", address=cluster, env=s3.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="ray-corpus", Prefix="scored/")["Contents"])
    assert "scored/_SUCCESS" in keys and "scored/_job.json" in keys
    got = []
    for k in (k for k in keys if k.endswith(".parquet")):
        client.download_file("ray-corpus", k, str(tmp_path / "part.parquet"))
        got.append(pd.read_parquet(tmp_path / "part.parquet"))
    out = pd.concat(got).sort_values(["input_file", "input_row"]).reset_index(drop=True)
    parquet = [k for k in keys if k.endswith(".parquet")]          # (pyarrow may also leave a `scored/` folder marker)
    assert len(parquet) == 4 and out["id"].tolist() == df["id"].tolist()   # 2 files x 2 blocks, every row once
    assert out["input_file"].unique().tolist() == ["s3://ray-corpus/in/part-0.parquet", "s3://ray-corpus/in/part-1.parquet"]
    assert set(out["label"].dropna()) <= {"negative", "positive"}


def test_bad_input_is_named_before_anything_is_written(untrained_model, tmp_path):
    good, folder, out = corpus(20), tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    good.to_csv(folder / "good.csv", index=False)
    good.rename(columns={"text": "review"}).to_csv(folder / "a.csv", index=False)     # a missing text column
    (folder / "b.csv").write_text("")                                                  # an empty file among good ones
    (folder / "c.parquet").write_bytes(b"PAR1 this is not parquet")                    # a broken parquet file
    proc = ray_predict(folder, "--out", out, "--model", untrained_model, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "3 of 4 input files cannot be scored (nothing was scored)" in proc.stderr, proc.stderr
    for message in (f"{folder / 'a.csv'}: no column 'text' (its columns are ['id', 'review', 'stars'])",
                    f"{folder / 'b.csv'}: empty file (0 bytes)", f"{folder / 'c.parquet'}: cannot be read as parquet"):
        assert message in proc.stderr, (message, proc.stderr)
    assert "Traceback" not in proc.stderr and not out.exists()                        # refused before Ray or a model


def test_a_block_that_fails_mid_job_is_named_and_not_marked_done(cluster, untrained_model, tmp_path):
    (tmp_path / "in").mkdir()
    corpus(100).to_parquet(tmp_path / "in" / "good.parquet", index=False)
    corpus(100, seed=2).to_parquet(tmp_path / "in" / "bad.parquet", index=False)
    data = bytearray((tmp_path / "in" / "bad.parquet").read_bytes())
    data[8:700] = b"\x55" * 692                                      # the pages, not the footer: planning passes
    (tmp_path / "in" / "bad.parquet").write_bytes(bytes(data))
    out = tmp_path / "out"
    proc = ray_predict(tmp_path / "in", "--out", out, "--model", untrained_model, address=cluster)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"failed: {tmp_path / 'in' / 'bad.parquet'} (rows from 0): " in proc.stderr and "cannot be read as parquet" in proc.stderr
    assert "100 rows -> " in proc.stderr and "1 failed" in proc.stderr and "rerun the same command" in proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["_job.json", next(n for n in names if n.startswith("good-"))]   # no _SUCCESS, no part of bad.parquet
    assert len(pd.read_parquet(out / names[1])) == 100


def test_a_killed_job_reruns_to_completion_without_duplicates(cluster, untrained_model, tmp_path):
    df = corpus(2000, seed=3)
    df.to_parquet(tmp_path / "in.parquet", index=False, row_group_size=250)
    out = tmp_path / "out"
    args = ["predict", "--engine", "ray", tmp_path / "in.parquet", "--out", out, "--model", untrained_model,
            "--block-rows", "100", "--num-actors", "1"]
    env = {**os.environ, "SENTIMENT_NB_NO_PROGRESS": "1"}
    job = subprocess.Popen([str(BIN / "sentiment-nb"), *map(str, args), "--address", cluster], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(list(out.glob("*.parquet"))) < 2 and job.poll() is None: time.sleep(0.2)
    assert job.poll() is None, f"the job ended before it was killed: {job.stderr.read().decode()[-2000:]}"
    assert scorer_processes(), "no scoring actor seen in the cluster while the job runs"
    os.killpg(job.pid, signal.SIGKILL); job.wait()
    deadline = time.time() + 60          # its actor lives in the cluster and may finish a block before Ray reaps it
    while scorer_processes() and time.time() < deadline: time.sleep(0.2)
    assert not scorer_processes(), "the killed job's actor is still alive after 60 s"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert 2 <= len(before) < 20 and not (out / "_SUCCESS").exists()

    rerun = subprocess.Popen([str(BIN / "sentiment-nb"), *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)   # no --address: a Ray of its own
    stderr = rerun.communicate(timeout=900)[1]
    assert rerun.returncode == 0, stderr[-3000:]
    assert f"{len(before)} already done" in stderr, stderr[-2000:]
    got = parts(out)
    assert got["input_row"].tolist() == list(range(2000)) and got["id"].tolist() == df["id"].tolist()  # none lost, none twice
    assert all((out / n).stat().st_mtime_ns == t for n, t in before.items())   # the parts done were kept, not rewritten
    assert not list(out.glob(".*.tmp")) and (out / "_SUCCESS").exists()
    deadline = time.time() + 30                                         # the Ray it started is gone with it
    while session_processes(rerun.pid) and time.time() < deadline: time.sleep(0.5)
    assert not session_processes(rerun.pid), [(p.pid, p.name()) for p in session_processes(rerun.pid)]
    assert not session_processes(job.pid), [(p.pid, p.name()) for p in session_processes(job.pid)]
