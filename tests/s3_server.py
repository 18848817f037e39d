"""Fixtures for the push tests: a real SeaweedFS S3 server on 127.0.0.1 (`sentiment_nb.push.local_s3_server`, the
same code `sentiment-nb s3-local` and `make run` use) and small model folders. Import the fixtures into a test module
with `from s3_server import ...`."""
import json, os
from pathlib import Path

import pytest

from sentiment_nb.push import local_s3_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    "One local S3 server per test module; each test uses a bucket of its own."
    with local_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def own_s3(tmp_path):
    "A local S3 server of this test's own, which the test may stop and start again (same data folder)."
    server = local_s3_server(tmp_path / "s3")
    with server:
        yield server


def small_model_folder(d: Path, seed: int = 0, files: int = 5) -> Path:
    "A folder shaped like a model (config.json + a few binary files, one in a sub-folder), fast to push."
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"seed": seed}))
    (d / "tokenizer").mkdir(exist_ok=True)
    for i in range(files - 1):
        (d / ("tokenizer" if i == 0 else ".") / f"part{i}.bin").write_bytes(os.urandom(20_000 + 1000 * i))
    return d


def folder_bytes(d: Path) -> dict[str, bytes]:
    "Relative path -> bytes of every file under `d`."
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def count_requests(client) -> list[str]:
    "A list that fills with the URL of every HTTP request `client` sends (botocore's before-send event)."
    sent = []
    client.meta.events.register("before-send", lambda request, **kw: sent.append(request.url))
    return sent


def object_keys(client, bucket: str) -> list[str]:
    "Every key in `bucket`."
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
