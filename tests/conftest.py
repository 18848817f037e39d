"Shared pytest fixtures: the project's paths, and a helper that runs the real `sentiment-nb` CLI."
import os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(*args, timeout=900, env=None, check=False, cwd=ROOT):
    "Run `sentiment-nb ARGS` in a subprocess; return the CompletedProcess (stdout and stderr as text)."
    proc = subprocess.run([str(BIN / "sentiment-nb"), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"sentiment-nb {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def pytest_configure(config):
    "The `slow` marker: tests that build a container image or train a model (still run by `make test`)."
    config.addinivalue_line("markers", "slow: builds a container image or trains a model (run by make test)")


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    "One real papermill run of every stage on params/tiny.yaml, shared by the tests that read its outputs."
    base = tmp_path_factory.mktemp("tiny-run")
    proc = run_cli("run", "-f", "params/tiny.yaml", "--run-id", "tiny", "--reports-dir", base / "reports",
                   "-p", "processed_dir", base / "processed", timeout=1500)
    return {"proc": proc, "run_dir": base / "reports" / "tiny", "processed_dir": base / "processed", "base": base}


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory):
    "A real model folder in seconds: the embedded MiniLM encoder with an untrained 2-class head and a training summary."
    from sentiment_nb.core import write_json
    from sentiment_nb.infer import untrained_model_dir
    d = untrained_model_dir(tmp_path_factory.mktemp("untrained-model"))
    write_json(d / "training_summary.json", {"run_id": "untrained", "params": {"max_input_length": 64}})
    return d


# Debian's chromium, never a downloaded browser; without the background-networking flags it keeps trying the closed network
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser_page(tmp_path):
    "A Playwright page in Debian's headless chromium (1100 x 900), closed after the test."
    from playwright.sync_api import sync_playwright
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists(): pytest.fail("Debian's chromium is missing: apt-get install -y chromium")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=chromium, headless=True,
                                                    args=CHROMIUM_FLAGS, viewport={"width": 1100, "height": 900})
        ctx.set_default_timeout(60_000)
        yield ctx.new_page()
        ctx.close()


def toast(page, text: str) -> None:
    "Wait until a Gradio error message containing `text` shows, then close every message."
    page.get_by_text(text).first.wait_for()
    for close in page.locator(".toast-close").all():
        try: close.click(timeout=2000)
        except Exception: pass
