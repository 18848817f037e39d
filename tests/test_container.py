"""The container image (Containerfile), built and started for real with podman: a mounted model, an s3:// model from
the local SeaweedFS server, and the pipeline target running two stages.

No image registry is reachable here, so the image is built on a Debian base made with mmdebstrap and `podman import`
(kept in podman's image store, /var/lib/containers/storage, as BASE_TAG: the first run on a machine spends ~2-3 min on
it, later runs nothing). The build goes through `make image` with this machine's CA bundle and pip's local torch
wheel folder as build options (mounted for the build, not copied into the image); podman's layer cache makes a rebuild
with unchanged sources take seconds. podman runs with runc, cgroupfs and the host's ulimits (../shared/TOOLCHAIN.md,
"Containers"), set through a containers.conf of the test's own."""
import json, os, resource, shutil, socket, sqlite3, ssl, subprocess, sys, time
from pathlib import Path

import httpx
import pytest

from s3_server import s3  # noqa: F401  (the module-scoped local SeaweedFS server)

ROOT = Path(__file__).resolve().parents[1]
BASE_TAG = "localhost/sentiment-nb-base:bookworm-py311"
IMAGE = "localhost/sentiment-nb:test"
IMAGE_UID = 1000                                        # the Containerfile's ARG UID
BASE_PACKAGES = "ca-certificates,python3,python3-venv,passwd"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # an imported tarball has no ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def podman_available() -> str | None:
    "Why podman cannot be used here (absent and not installable), or None once `podman`, runc and mmdebstrap are on PATH."
    tools = ("podman", "runc", "mmdebstrap")
    if all(shutil.which(t) for t in tools): return None
    if os.geteuid() != 0 or not shutil.which("apt-get"): return "podman/runc/mmdebstrap are absent and apt-get as root is not available"
    proc = subprocess.run(["apt-get", "install", "-y", "-qq", "podman", "runc", "mmdebstrap"], capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=900)
    if all(shutil.which(t) for t in tools): return None
    return f"podman is absent and `apt-get install podman runc mmdebstrap` failed: {proc.stderr.strip()[-300:]}"


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory):
    "The environment podman runs in here: runc, cgroupfs and lowered ulimits, from a containers.conf of our own."
    reason = podman_available()
    if reason: pytest.skip(reason)
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 4096)     # runc could not set 65536 here, 16384 it could
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n\n'
                    f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n')
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(env: dict, *args, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    "Run `podman ARGS`; raise with its stderr when it fails and `check`."
    proc = subprocess.run(["podman", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode: raise AssertionError(f"podman {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def ensure_base_image(env: dict, work: Path) -> str:
    "BASE_TAG, built once per machine from Debian packages (mmdebstrap) and imported; later runs find it in the store."
    if podman(env, "image", "exists", BASE_TAG, check=False).returncode == 0: return BASE_TAG
    tar = work / "base.tar"
    subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(tar)],
                   check=True, capture_output=True, timeout=1800)
    podman(env, "import", "--change", f"ENV {PATH_ENV}", tar, BASE_TAG, timeout=600)
    tar.unlink()
    return BASE_TAG


def torch_wheel_folder() -> str | None:
    "pip's local find-links folder when it holds a torch wheel (the CPU build on these machines), else None."
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            for folder in value.strip("'\"").split():
                if any(Path(folder).glob("torch-*.whl")): return folder
    return None


def build_options() -> list[str]:
    "Options of this machine's build: host network, its CA bundle and the local torch wheels, mounted read-only."
    ca = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    opts = ["--network", "host", "-v", f"{ca}:/etc/ssl/certs/ca-certificates.crt:ro"]
    wheels = torch_wheel_folder()
    return opts + (["-v", f"{wheels}:/wheels:ro", "--build-arg", "TORCH_WHEELS=/wheels"] if wheels else [])


@pytest.fixture(scope="module")
def image(podman_env, tmp_path_factory):
    "The serving image built by `make image` on the local base; prints how long the build took."
    base = ensure_base_image(podman_env, tmp_path_factory.mktemp("base"))
    args = " ".join(["--build-arg", f"BASE={base}", *build_options()])
    t0 = time.monotonic()
    proc = subprocess.run(["make", "-C", str(ROOT), "image", f"IMAGE={IMAGE}", f"IMAGE_ARGS={args}"], capture_output=True,
                          text=True, env=podman_env, timeout=3000)
    assert proc.returncode == 0, f"make image failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    size = json.loads(podman(podman_env, "image", "inspect", IMAGE).stdout)[0]["Size"]
    print(f"\nimage {IMAGE}: built in {time.monotonic() - t0:.0f} s, {size / 1e9:.2f} GB")
    return IMAGE


def host_port(env: dict, name: str) -> tuple[str, int]:
    "The host address and port that container port 7860 is published on."
    host, _, port = podman(env, "port", name, "7860").stdout.split()[0].rpartition(":")
    return host, int(port)


def wait_ready(env: dict, name: str, url: str, timeout: float = 180) -> dict:
    "Poll GET /health until the model is ready; fail with the container's log when it exits, fails or times out."
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url + "/health", timeout=5).json()
            if last["model_state"] == "ready": return last
            if last["model_state"] == "failed": break
        except httpx.HTTPError as e: last = e
        if podman(env, "inspect", "-f", "{{.State.Running}}", name).stdout.strip() != "true": break
        time.sleep(0.5)
    raise AssertionError(f"container {name} not ready ({last}); its log:\n{podman(env, 'logs', name, check=False).stderr[-4000:]}")


def start_container(env: dict, name: str, image: str, model: str, log_dir: Path, *extra, run_env: dict | None = None):
    "Start the image detached, port 7860 published on 127.0.0.1 only; returns (url, seconds until /health is ready)."
    log_dir.mkdir(exist_ok=True); os.chown(log_dir, IMAGE_UID, IMAGE_UID)       # the log folder, writable by the image's user
    names = [a for k in (run_env or {}) for a in ("-e", k)]                      # values from the environment, not argv
    t0 = time.monotonic()
    podman({**env, **(run_env or {})}, "run", "-d", "--name", name, "-p", "127.0.0.1::7860", "-v",
           f"{log_dir}:/srv/sentiment-nb/reports", "-e", f"SENTIMENT_NB_MODEL={model}",
           "-e", "SENTIMENT_NB_SERVE_ARGS=--variant fp32", *names, *extra, image)
    host, port = host_port(env, name)
    url = f"http://{host}:{port}"
    health = wait_ready(env, name, url)
    return url, time.monotonic() - t0, health


def listening_sockets(env: dict, name: str) -> set[tuple[str, int]]:
    "(address, port) of the IPv4 TCP sockets listening inside the container, from its /proc/net/tcp."
    rows = podman(env, "exec", name, "cat", "/proc/net/tcp").stdout.splitlines()[1:]
    out = set()
    for row in rows:
        local, state = row.split()[1], row.split()[3]
        if state == "0A":                                                         # TCP_LISTEN
            addr, port = local.split(":")
            out.add((socket.inet_ntoa(bytes.fromhex(addr)[::-1]), int(port, 16)))
    return out


def other_host_addresses() -> list[str]:
    "This machine's IPv4 addresses other than loopback."
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return [a for a in out if "." in a and not a.startswith("127.")]


def readable_copy(src: Path, dest: Path) -> Path:
    "A copy of a model folder that the image's user can read (pytest's temporary folders are private to root)."
    shutil.copytree(src, dest)
    for p in [dest, *dest.rglob("*")]: p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def predict(url: str, text: str) -> dict:
    r = httpx.post(url + "/predict", json={"text": text}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def stop_with_sigterm(env: dict, name: str, timeout: float = 30) -> tuple[int, float]:
    "Send SIGTERM to the container and wait for it to exit; (exit code, seconds)."
    t0 = time.monotonic()
    podman(env, "kill", "--signal", "TERM", name)
    code = int(podman(env, "wait", name, timeout=timeout).stdout.strip())
    return code, time.monotonic() - t0


def logged_rows(log_dir: Path) -> list[tuple]:
    "(text, label) of every committed row of the prediction log, after an integrity check."
    with sqlite3.connect(log_dir / "predictions.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return con.execute("SELECT text, label FROM predictions ORDER BY id").fetchall()


def remove(env: dict, name: str) -> None:
    podman(env, "rm", "-f", name, check=False)


def test_image_serves_a_mounted_model(podman_env, image, untrained_model, tmp_path):
    "Mounted model: /health, /predict, non-root, 0.0.0.0 inside but 127.0.0.1 on the host, SIGTERM keeps the log's rows."
    name, log_dir = f"sentiment-nb-test-{os.getpid()}", tmp_path / "log"
    try:
        url, startup, health = start_container(podman_env, name, image, "/models/m", log_dir,
                                               "-v", f"{readable_copy(untrained_model, tmp_path / 'model')}:/models/m:ro")
        print(f"\n/health ready {startup:.1f} s after `podman run` (mounted model, fp32)")
        assert health["run_id"] == "untrained" and health["labels"] == ["negative", "positive"]
        texts = ["A warm, funny and beautifully acted film.", "Dull and far too long.", "It was fine."]
        for t in texts:
            p = predict(url, t)
            assert p["label"] in ("negative", "positive") and 0 <= p["confidence"] <= 1 and p["run_id"] == "untrained"
        assert httpx.get(url + "/health", timeout=5).json()["predictions_logged"] == len(texts)

        status = podman(podman_env, "exec", name, "cat", "/proc/1/status").stdout   # PID 1 is the server itself
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert uid == str(IMAGE_UID), f"the server runs as uid {uid}, expected the image's non-root user {IMAGE_UID}"
        assert podman(podman_env, "exec", name, "id", "-un").stdout.strip() == "app"

        assert ("0.0.0.0", 7860) in listening_sockets(podman_env, name), "the demo does not listen on the container's interface"
        host, port = host_port(podman_env, name)
        assert host == "127.0.0.1"
        for addr in other_host_addresses():             # the published port is not reachable on the host's other interfaces
            with pytest.raises(OSError): socket.create_connection((addr, port), timeout=2).close()
        assert podman(podman_env, "healthcheck", "run", name, check=False).returncode == 0, "the image's HEALTHCHECK fails"

        code, seconds = stop_with_sigterm(podman_env, name)
        logs = podman(podman_env, "logs", name).stderr
        assert code == 0 and seconds < 20, f"SIGTERM: exit code {code} after {seconds:.1f} s; log:\n{logs[-3000:]}"
        assert "Traceback" not in logs, logs[-3000:]
        assert [t for t, _ in logged_rows(log_dir)] == texts
    finally: remove(podman_env, name)


def test_image_serves_a_model_from_s3(podman_env, image, untrained_model, s3, tmp_path):
    "SENTIMENT_NB_MODEL=s3://...: the container pulls and verifies the pushed model, credentials from the environment only."
    from sentiment_nb.push import push_model
    pushed = push_model(untrained_model, "container-models", "demo", "run-1", client=s3.client())
    name, log_dir = f"sentiment-nb-test-s3-{os.getpid()}", tmp_path / "log"
    port = s3.endpoint_url.rpartition(":")[2]
    creds = {**s3.env(), "AWS_ENDPOINT_URL_S3": f"http://10.0.2.2:{port}"}  # slirp4netns: the host's 127.0.0.1 is 10.0.2.2
    try:
        url, startup, health = start_container(podman_env, name, image, "s3://container-models/demo", log_dir,
                                               "--network", "slirp4netns:allow_host_loopback=true", run_env=creds)
        print(f"\n/health ready {startup:.1f} s after `podman run` (s3:// model pulled, fp32)")
        assert health["run_id"] == "untrained" and pushed["run_id"] == "run-1"
        assert predict(url, "Dull and far too long.")["label"] in ("negative", "positive")
        config = json.loads(podman(podman_env, "inspect", name).stdout)[0]["Config"]
        assert not any(s3.secret_key in arg for arg in config.get("Cmd") or []), "the secret is on the command line"
        pulled = podman(podman_env, "exec", name, "ls", "/srv/sentiment-nb/data/models/s3/container-models/demo").stdout.split()
        assert pulled == ["run-1"]
        code, seconds = stop_with_sigterm(podman_env, name)
        assert code == 0, podman(podman_env, "logs", name).stderr[-3000:]
        assert len(logged_rows(log_dir)) == 1
    finally: remove(podman_env, name)


def test_pipeline_target_runs_stages(podman_env, image, tmp_path):
    "`make image IMAGE_TARGET=pipeline`: `sentiment-nb run` executes stage notebooks inside the container, reports on a mount."
    tag = "localhost/sentiment-nb-pipeline:test"                  # built on the serve image's layers (`image` built them)
    args = " ".join(["--build-arg", f"BASE={BASE_TAG}", *build_options()])
    proc = subprocess.run(["make", "-C", str(ROOT), "image", "IMAGE_TARGET=pipeline", f"IMAGE={tag}", f"IMAGE_ARGS={args}"],
                          capture_output=True, text=True, env=podman_env, timeout=3000)
    assert proc.returncode == 0, f"make image IMAGE_TARGET=pipeline failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    reports = tmp_path / "reports"; reports.mkdir(); os.chown(reports, IMAGE_UID, IMAGE_UID)
    run = podman(podman_env, "run", "--rm", "-v", f"{reports}:/srv/sentiment-nb/reports", tag,
                 "sentiment-nb", "run", "-f", "params/tiny.yaml", "--stages", "00,01", "--run-id", "in-container", timeout=900)
    manifest = json.loads((reports / "in-container" / "manifest.json").read_text())
    assert [(s["stage"][:2], s["status"]) for s in manifest["stages"]] == [("00", "ok"), ("01", "ok")], run.stderr[-3000:]
    assert (reports / "in-container" / "index.html").exists()
