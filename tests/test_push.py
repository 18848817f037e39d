"""Push to and pull from a real S3-compatible server (SeaweedFS over HTTP on 127.0.0.1): the round trip, push
conditions, bad settings, missing or wrong credentials, a server that is down or stops mid-push, and pulls that
refuse tampered checksums and path-traversal manifests."""
import hashlib, json, shutil, socket, sys, time

import numpy as np
import pytest

from conftest import run_cli
from s3_server import count_requests, folder_bytes, object_keys, own_s3, s3, small_model_folder
from sentiment_nb.core import write_json
from sentiment_nb.push import (PushError, check_push_ready, pull_model, push_evaluation, push_if_conditions_hold,
                               push_model, push_settings, s3_client)


def latest_run(client, bucket, prefix):
    return json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/latest.json")["Body"].read())["run_id"]


def test_push_then_pull_round_trips_byte_for_byte(s3, untrained_model, tmp_path, monkeypatch):
    from sentiment_nb.infer import load_model, predict_proba
    client = s3.client()
    metrics = tmp_path / "metrics.json"; metrics.write_text('{"metrics": {"accuracy": 0.5}}')
    out = push_model(untrained_model, "roundtrip", "team/sentiment", "run-1", {"metrics.json": metrics}, client=client)
    assert out["bucket_created"] and out["uploaded"] == out["files"] == len(folder_bytes(untrained_model)) + 1
    keys = object_keys(client, "roundtrip")
    assert {"team/sentiment/latest.json", "team/sentiment/run-1/manifest.json", "team/sentiment/run-1/metrics.json",
            "team/sentiment/run-1/model/model.safetensors"} <= set(keys)
    assert latest_run(client, "roundtrip", "team/sentiment") == "run-1"

    # the path infer takes for s3:// sources: credentials and endpoint from the environment only
    monkeypatch.setenv("SENTIMENT_NB_MODEL_CACHE", str(tmp_path / "cache"))
    for k, v in s3.env().items(): monkeypatch.setenv(k, v)
    pulled = load_model("s3://roundtrip/team/sentiment")
    assert pulled.model_dir.is_relative_to(tmp_path / "cache")
    assert folder_bytes(pulled.model_dir) == folder_bytes(untrained_model)
    local = load_model(untrained_model)
    texts = ["a moving, funny film", "dull"]
    np.testing.assert_allclose(predict_proba(pulled, texts), predict_proba(local, texts), atol=1e-6)
    assert pulled.max_length == 64


def test_a_push_is_keyed_by_the_run_that_trained_the_model(s3, untrained_model, tmp_path):
    """Stage 03's push of a model trained in another run (03 run alone, or from JupyterLab) goes under the training
    run's id, records both runs' ids in the manifest and latest.json, and a second evaluation files it under the same id."""
    from sentiment_nb.infer import load_model
    client, trained = s3.client(), "20261201-0815-train"
    model = tmp_path / "reports" / trained / "model"
    shutil.copytree(untrained_model, model)
    write_json(model / "training_summary.json", {"run_id": trained, "params": {"max_input_length": 64}})
    evaluation = tmp_path / "reports" / "20261202-0900-eval"; evaluation.mkdir()
    metrics = write_json(evaluation / "metrics.json", {"metrics": {"accuracy": 0.9}})
    report = {"labels": ["negative", "positive"], "rows": 4, "metrics": {"accuracy": 0.9, "macro_f1": 0.85},
              "model_dir": str(model), "model_run_id": load_model(model).run_id}
    settings = push_settings({"enabled": True, "bucket_name": "bytraining", "endpoint_url": s3.endpoint_url,
                              "conditions": [{"metric": "accuracy", "threshold": 0.5}]})
    out = push_evaluation(settings, report, evaluation, {"metrics.json": metrics}, client=client)
    assert (out["status"], out["run_id"], out["evaluation_run_id"]) == ("pushed", trained, evaluation.name), out["message"]
    keys = object_keys(client, "bytraining")
    assert f"sentiment-nb/{trained}/manifest.json" in keys and not [k for k in keys if evaluation.name in k], keys
    read = lambda key: client.get_object(Bucket="bytraining", Key=f"sentiment-nb/{key}")["Body"].read()
    for key in ("latest.json", f"{trained}/manifest.json"):
        got = json.loads(read(key))
        assert (got["run_id"], got["training_run_id"], got["evaluation_run_id"]) == (trained, trained, evaluation.name), got
    card = read(f"{trained}/README.md").decode()
    assert f"# Sentiment classifier `{trained}`" in card and f"evaluated in run `{evaluation.name}`" in card, card[:600]
    assert f's3://bytraining/sentiment-nb#{trained}' in card

    again = push_evaluation(settings, report, tmp_path / "reports" / "notebook", {"metrics.json": metrics}, client=client)
    assert (again["run_id"], again["evaluation_run_id"]) == (trained, "notebook"), again["message"]
    assert again["already_present"] == again["files"] - 1, again   # only the card changed: the model was not sent again
    assert json.loads(read("latest.json"))["evaluation_run_id"] == "notebook"


def test_failing_condition_uploads_nothing_and_says_by_how_much(s3, tmp_path):
    client = s3.client()
    settings = push_settings({"enabled": True, "bucket_name": "conditions", "endpoint_url": s3.endpoint_url,
                              "conditions": [{"metric": "accuracy", "threshold": 0.8}, {"metric": "log_loss", "threshold": 0.7}]})
    out = push_if_conditions_hold(settings, {"accuracy": 0.734, "log_loss": 0.69}, small_model_folder(tmp_path / "m"),
                                  "r1", client=client)
    assert out["status"] == "skipped"
    assert out["message"] == "not pushed: accuracy = 0.7340 misses >= 0.8 by 0.0660"
    assert [c["holds"] for c in out["conditions"]] == [False, True]
    assert "conditions" not in [b["Name"] for b in client.list_buckets()["Buckets"]], "a skipped push created the bucket"
    out = push_if_conditions_hold(settings, {"accuracy": 0.81, "log_loss": 0.69}, tmp_path / "m", "r1", client=client)
    assert out["status"] == "pushed" and latest_run(client, "conditions", "sentiment-nb") == "r1"


def test_invalid_bucket_name_is_refused_before_any_request(tmp_path):
    for bad, rule in (("Bad_Bucket", "only lower-case letters"), ("ab", "3 to 63"), ("10.0.0.1", "IP address")):
        with pytest.raises(ValueError, match=rule):
            push_settings({"enabled": True, "bucket_name": bad})
    client = s3_client("http://127.0.0.1:9")
    sent = count_requests(client)
    with pytest.raises(ValueError, match="not a valid S3 bucket name"):
        push_model(small_model_folder(tmp_path / "m"), "Bad_Bucket", "p", "r1", client=client)
    assert sent == []


def test_invalid_bucket_name_stops_the_stage_before_scoring(tmp_path):
    proc = run_cli("run", "--stages", "03", "--run-id", "bad", "--reports-dir", tmp_path, "-p", "processed_dir", tmp_path / "none",
                   "-p", "push_model_s3.enabled", "true", "-p", "push_model_s3.bucket_name", "Bad_Bucket", timeout=300)
    assert proc.returncode == 1
    assert "push_model_s3.bucket_name 'Bad_Bucket' is not a valid S3 bucket name" in proc.stderr
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_no_credentials_is_a_clear_error_before_work(tmp_path, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = push_settings({"enabled": True, "bucket_name": "models"})
    with pytest.raises(PushError, match="no AWS credentials found: set AWS_ACCESS_KEY_ID"):
        check_push_ready(settings, ["accuracy"])
    with pytest.raises(PushError, match="no usable AWS credentials while checking bucket 'models'"):
        push_model(small_model_folder(tmp_path / "m"), "models", "p", "r1", endpoint_url="http://127.0.0.1:9")
    check_push_ready(push_settings({"enabled": False}), ["accuracy"])   # a disabled push needs no credentials


def test_server_down_is_a_clear_error_and_nothing_is_marked_latest(own_s3, tmp_path):
    push_model(small_model_folder(tmp_path / "a", seed=1), "models", "p", "r1", client=own_s3.client())
    own_s3.stop()
    client = own_s3.client(max_attempts=3)             # botocore's standard retry mode, 3 requests per call
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    sent = count_requests(client)
    with pytest.raises(PushError, match=r"could not reach S3 while checking bucket 'models' after 3 tries"):
        push_model(small_model_folder(tmp_path / "b", seed=2), "models", "p", "r2", client=client)
    assert len(sent) == 3, f"connection failures are retried, with backoff, up to max_attempts: {sent}"
    own_s3.start()
    client = own_s3.client()
    assert latest_run(client, "models", "p") == "r1"
    assert not [k for k in object_keys(client, "models") if k.startswith("p/r2/")]


def test_server_stopped_mid_push_keeps_latest_and_a_rerun_completes(own_s3, tmp_path):
    good, new = small_model_folder(tmp_path / "good", seed=1), small_model_folder(tmp_path / "new", seed=2)
    push_model(good, "models", "p", "r1", client=own_s3.client())
    client, puts = own_s3.client(max_attempts=2), []
    def stop_after_second_upload(**kw):
        puts.append(1)
        if len(puts) == 2: own_s3.stop()
    client.meta.events.register("after-call.s3.PutObject", stop_after_second_upload)
    with pytest.raises(PushError, match="could not reach S3 while verifying s3://models/p/r2/"):
        push_model(new, "models", "p", "r2", client=client)

    own_s3.start()
    client = own_s3.client()
    assert latest_run(client, "models", "p") == "r1"
    assert "p/r2/manifest.json" not in object_keys(client, "models")
    assert folder_bytes(pull_model("models", "p", cache_dir=tmp_path / "cache", client=client)) == folder_bytes(good)

    out = push_model(new, "models", "p", "r2", client=client)
    assert (out["already_present"], out["uploaded"]) == (2, out["files"] - 2), "the rerun re-sent files already verified"
    assert latest_run(client, "models", "p") == "r2"
    assert folder_bytes(pull_model("models", "p", cache_dir=tmp_path / "cache", client=client)) == folder_bytes(new)


def test_wrong_credentials_fail_at_once_without_a_retry_storm(s3, tmp_path, monkeypatch):
    push_model(small_model_folder(tmp_path / "m"), "wrongcreds", "p", "r1", client=s3.client())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    for call in (lambda c: push_model(tmp_path / "m", "wrongcreds", "p", "r2", client=c),
                 lambda c: pull_model("wrongcreds", "p", cache_dir=tmp_path / "cache", client=c)):
        client = s3_client(s3.endpoint_url, max_attempts=4)   # the client push and pull build: credentials from the chain
        sent, started = count_requests(client), time.time()
        with pytest.raises(PushError, match=r"S3 rejected the credentials \((403|SignatureDoesNotMatch)\) while .*; not retried"):
            call(client)
        assert len(sent) == 1 and time.time() - started < 2, f"{len(sent)} requests for rejected credentials"
    settings = push_settings({"enabled": True, "bucket_name": "wrongcreds", "endpoint_url": s3.endpoint_url})
    with pytest.raises(PushError, match="S3 rejected the credentials"):   # stage 03 checks this before it scores
        check_push_ready(settings, ["accuracy"])


def test_pull_verifies_checksums_before_loading(s3, tmp_path):
    client = s3.client()
    src = small_model_folder(tmp_path / "m")
    push_model(src, "checksums", "p", "r1", client=client)
    cache = tmp_path / "cache"
    model = pull_model("checksums", "p", cache_dir=cache, client=client)
    (model / "part1.bin").write_bytes(b"x" * (model / "part1.bin").stat().st_size)   # a damaged cached copy is fetched again
    assert folder_bytes(pull_model("checksums", "p", cache_dir=cache, client=client)) == folder_bytes(src)

    size = (src / "part1.bin").stat().st_size
    client.put_object(Bucket="checksums", Key="p/r1/model/part1.bin", Body=b"y" * size)   # same size, other bytes
    with pytest.raises(PushError, match="checksum mismatch for s3://checksums/p/r1/model/part1.bin.*refusing to load"):
        pull_model("checksums", "p", cache_dir=tmp_path / "fresh", client=client)
    assert not list((tmp_path / "fresh").rglob("*.bin")), "a model that failed verification was left in the cache"

    client.put_object(Bucket="checksums", Key="p/r1/manifest.json", Body=b'{"files": {}}')
    with pytest.raises(PushError, match="does not match the SHA-256 in latest.json"):
        pull_model("checksums", "p", cache_dir=tmp_path / "fresh", client=client)


def test_pull_refuses_path_traversal_in_a_manifest(s3, tmp_path):
    client = s3.client()
    client.create_bucket(Bucket="traversal")
    config, evil = b"{}", b"pwned"
    files = {"model/config.json": {"size": 2, "sha256": hashlib.sha256(config).hexdigest()},
             "../../../escaped.txt": {"size": 5, "sha256": hashlib.sha256(evil).hexdigest()}}
    manifest = json.dumps({"run_id": "r1", "files": files}).encode()
    # AWS stores a key such as 'p/r1/../../../escaped.txt' as is (SeaweedFS refuses it): the manifest alone must be refused
    for key, body in (("p/r1/model/config.json", config), ("p/r1/manifest.json", manifest),
                      ("p/latest.json", json.dumps({"run_id": "r1", "manifest_sha256": hashlib.sha256(manifest).hexdigest()}).encode())):
        client.put_object(Bucket="traversal", Key=key, Body=body)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(PushError, match=r"manifest entry '../../../escaped.txt' is not a safe relative path"):
        pull_model("traversal", "p", cache_dir=cache, client=client)
    assert not list(tmp_path.rglob("escaped.txt")) and not cache.exists()

    client.put_object(Bucket="traversal", Key="p/latest.json", Body=json.dumps({"run_id": "../../outside"}).encode())
    with pytest.raises(PushError, match=r"run id '../../outside' is not a safe name"):
        pull_model("traversal", "p", cache_dir=cache, client=client)


def test_s3_local_command_serves_a_command_then_stops(tmp_path):
    script = ("import boto3, os; c = boto3.client('s3', region_name='us-east-1'); c.create_bucket(Bucket='cli');"
              "c.put_object(Bucket='cli', Key='k', Body=b'v'); print(os.environ['AWS_ENDPOINT_URL_S3'])")
    proc = run_cli("s3-local", "--data-dir", tmp_path / "s3", "--", sys.executable, "-c", script, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    endpoint = proc.stdout.strip().splitlines()[-1]
    assert endpoint.startswith("http://127.0.0.1:")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])), timeout=1).close()
    proc = run_cli("s3-local", "--data-dir", tmp_path / "s3", "--", sys.executable, "-c", "raise SystemExit(3)", timeout=120)
    assert proc.returncode == 3, "s3-local does not pass on the command's exit status"
