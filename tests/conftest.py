"Shared pytest fixtures: the project's paths, and a helper that runs the real `sentiment-nb` CLI."
import os, subprocess, sys
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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from sentiment_nb.core import embedded_model_path, write_json
    d = tmp_path_factory.mktemp("untrained-model")
    AutoTokenizer.from_pretrained(embedded_model_path()).save_pretrained(d)
    AutoModelForSequenceClassification.from_pretrained(
        embedded_model_path(), num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1}).save_pretrained(d)
    write_json(d / "training_summary.json", {"run_id": "untrained", "params": {"max_input_length": 64}})
    return d
