"""Stage 02 across processes: a real fine-tuning on a tiny slice, reload and predict, reproducibility, bad input,
resume after SIGKILL mid-epoch, and a 2-process torchrun (gloo) run."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, ROOT

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def splits_dir(tmp_path_factory):
    "Real Rotten Tomatoes splits, 160 rows: 96 train, 32 validation, 32 test."
    from sentiment_nb.data import prepare_splits
    d = tmp_path_factory.mktemp("splits")
    prepare_splits("rotten_tomatoes", max_rows=160, test_size=0.2, validation_size=0.2, processed_dir=d)
    return d


def tiny_params(splits_dir, run_dir, **kw):
    from sentiment_nb.train import TrainingParams
    base = dict(processed_dir=str(splits_dir), run_dir=str(run_dir), max_train_rows=64, max_validation_rows=32,
                batch_size=16, n_epochs=1, max_input_length=64, learning_rate=1e-4, num_threads=2)
    return TrainingParams(**{**base, **kw})


def train_cmd(*params, torchrun_procs=0):
    "The `sentiment-nb train` command line (optionally under torchrun) with `-p` pairs."
    pairs = [a for k, v in zip(params[::2], params[1::2]) for a in ("-p", str(k), str(v))]
    head = [str(BIN / "torchrun"), f"--nproc_per_node={torchrun_procs}", "--standalone"] if torchrun_procs else []
    return [*head, str(BIN / "sentiment-nb"), "train", *pairs]


def test_trains_saves_safetensors_and_reloads(splits_dir, tmp_path):
    from sentiment_nb.infer import load_model, predict
    from sentiment_nb.train import train_classifier
    summary, history = train_classifier(tiny_params(splits_dir, tmp_path / "run-a", n_epochs=2))
    model_dir = tmp_path / "run-a" / "model"
    assert (model_dir / "model.safetensors").stat().st_size > 1_000_000
    assert not list(model_dir.glob("*.bin")) and (model_dir / "tokenizer.json").exists()
    saved = json.loads((model_dir / "training_summary.json").read_text())
    assert saved["run_id"] == "run-a" and saved["params"]["max_input_length"] == 64
    assert saved["best_epoch"] in (1.0, 2.0) and saved["samples_per_second"] > 0
    assert list(history["epoch"]) == [1.0, 2.0] and history["train_loss"].notna().all()
    assert not (tmp_path / "run-a" / "train").exists(), "checkpoints were kept though keep_checkpoints is False"
    m = load_model(model_dir)
    assert m.labels == ["negative", "positive"] and m.max_length == 64
    out = predict(m, ["a wonderful, moving film", "dull and far too long"])
    assert [o["label"] in m.labels for o in out] == [True, True]
    assert all(abs(sum(o["scores"].values()) - 1) < 1e-5 for o in out)


def test_cli_trains_a_mean_pooling_model_that_predict_reads(splits_dir, tmp_path):
    "`sentiment-nb train -p pooling mean` saves a mean-pooling model; `sentiment-nb predict` scores with it as the library does."
    from sentiment_nb.infer import load_model, predict_proba
    run_dir, texts = tmp_path / "mean", ["a wonderful, moving film", "dull and far too long"]
    proc = subprocess.run(train_cmd("processed_dir", splits_dir, "run_dir", run_dir, "pooling", "mean", "max_train_rows", 32,
                                    "max_validation_rows", 16, "batch_size", 16, "max_input_length", 64, "num_threads", 2),
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = run_dir / "model"
    config, summary = (json.loads((model_dir / f).read_text()) for f in ("config.json", "training_summary.json"))
    assert (config["pooling"], config["model_type"]) == ("mean", "bert-mean-pooling")
    assert (summary["pooling"], summary["cls_only_last_layer"]) == ("mean", False)   # the mean reads every row
    m = load_model(model_dir)
    assert type(m.model).__name__ == "BertMeanPoolingForSequenceClassification"
    want = predict_proba(m, texts)
    for variant, tol in (("fp32", 1e-5), ("onnx", 1e-4)):
        out = subprocess.run([str(BIN / "sentiment-nb"), "predict", *texts, "--model", str(model_dir), "--variant", variant,
                              "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        got = [[r["scores"]["negative"], r["scores"]["positive"]] for r in map(json.loads, out.stdout.splitlines())]
        assert abs(np.array(got) - want).max() < tol, (variant, got, want)


def test_same_seed_same_metrics(splits_dir, tmp_path):
    from sentiment_nb.train import train_classifier
    runs = [train_classifier(tiny_params(splits_dir, tmp_path / f"r{i}", max_train_rows=32, seed=7))[1]
            for i in range(2)]
    cols = ["train_loss", "validation_loss", "validation_accuracy", "validation_macro_f1"]
    assert runs[0][cols].to_dict("records") == runs[1][cols].to_dict("records")
    other = train_classifier(tiny_params(splits_dir, tmp_path / "r2", max_train_rows=32, seed=8))[1]
    assert other["train_loss"].iloc[0] != runs[0]["train_loss"].iloc[0], "the seed changes nothing"


def test_average_last_epochs_scores_the_average_and_keeps_it_only_if_better(splits_dir, tmp_path):
    import json
    from safetensors.torch import load_file
    from sentiment_nb.train import train_classifier
    kw = dict(max_train_rows=48, n_epochs=3, seed=3)
    plain, hist = train_classifier(tiny_params(splits_dir, tmp_path / "plain", **kw))
    summary, hist2 = train_classifier(tiny_params(splits_dir, tmp_path / "avg", average_last_epochs=3, **kw))
    cols = ["train_loss", "validation_loss", "validation_accuracy"]
    assert hist[cols].to_dict("records") == hist2[cols].to_dict("records"), "the callback changed the training"
    assert plain["weight_average"] is None
    avg = summary["weight_average"]
    assert avg["epochs"] == [1.0, 2.0, 3.0]
    assert avg["validation"]["loss"] not in set(hist["validation_loss"]), "the average scored like one of its epochs"
    assert avg["best_epoch_validation"] == plain["best_validation"]
    better = avg["validation"]["accuracy"] > plain["best_validation"]["accuracy"]
    assert avg["kept"] == better
    assert summary["best_validation"] == (avg["validation"] if better else plain["best_validation"])
    # the weights kept are the best epoch's (the plain run's, bit for bit: same seed) unless the average won
    kept, same = load_file(tmp_path / "avg" / "model" / "model.safetensors"), load_file(tmp_path / "plain" / "model" / "model.safetensors")
    assert all(kept[k].equal(same[k]) for k in kept) != better
    assert json.loads((tmp_path / "avg" / "model" / "training_summary.json").read_text())["weight_average"]["kept"] == better


BAD_INPUTS = [
    (dict(model_name="/no/such/model"), "cannot load model '/no/such/model'"),
    (dict(batch_size=0), "batch_size=0 must be >= 1"),
    (dict(learning_rate=0.0), "learning_rate=0.0 must be > 0"),
    (dict(learning_rate=-1e-5), "learning_rate=-1e-05 must be > 0"),
    (dict(n_epochs=0), "n_epochs=0 must be > 0"),
    (dict(freeze_backbone=True, trainable_last_layers=7), "has only 6 transformer blocks"),
    (dict(class_weights=[1.0, 2.0, 3.0]), "must hold 2 positive numbers"),
    (dict(resume_from_checkpoint=True), "holds no complete checkpoint"),
    (dict(average_last_epochs=1), "average_last_epochs=1 must be 0 (off) or >= 2"),
]


@pytest.mark.parametrize("change,message", BAD_INPUTS, ids=[m.split()[0] for _, m in BAD_INPUTS])
def test_bad_input_fails_before_training_and_keeps_the_old_model(splits_dir, tmp_path, change, message):
    from sentiment_nb.train import train_classifier
    model_dir = tmp_path / "model"; model_dir.mkdir()
    (model_dir / "config.json").write_text('{"kept": true}')
    with pytest.raises(ValueError, match=None) as e:
        train_classifier(tiny_params(splits_dir, tmp_path / "run", model_dir=str(model_dir), **change))
    assert message in str(e.value)
    assert (model_dir / "config.json").read_text() == '{"kept": true}'
    assert not (tmp_path / "run" / "train").exists()


def test_label_count_mismatch_and_missing_split(splits_dir, tmp_path):
    from transformers import BertConfig
    from sentiment_nb.train import train_classifier
    three = tmp_path / "three-class"
    BertConfig(num_labels=3, architectures=["BertForSequenceClassification"]).save_pretrained(three)
    with pytest.raises(ValueError, match="is a classifier with 3 labels .* but the splits have 2"):
        train_classifier(tiny_params(splits_dir, tmp_path / "run", model_name=str(three)))
    partial = tmp_path / "partial"; shutil.copytree(splits_dir, partial); (partial / "validation.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"split\(s\) \['validation'\] missing"):
        train_classifier(tiny_params(partial, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_cli_refuses_unknown_training_parameter():
    proc = subprocess.run(train_cmd("n_epoch", 2), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "unknown training parameter(s) 'n_epoch' (did you mean 'n_epochs'?)" in proc.stderr


def test_killed_mid_epoch_resumes_from_checkpoint_and_finishes(splits_dir, tmp_path):
    run_dir, train_dir = tmp_path / "run", tmp_path / "run" / "train"
    common = ("processed_dir", splits_dir, "run_dir", run_dir, "max_train_rows", 96, "max_validation_rows", 16,
              "batch_size", 8, "max_input_length", 64, "checkpoint_steps", 3, "num_threads", 2)
    proc = subprocess.Popen(train_cmd(*common), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (train_dir / "checkpoint-3" / "trainer_state.json").exists():
        assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL); proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "model").exists(), "the killed run finished before the kill (12 steps expected)"

    proc = subprocess.run(train_cmd(*common, "resume_from_checkpoint", True), cwd=ROOT, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "model" / "training_summary.json").read_text())
    assert Path(summary["resumed_from"]).name.startswith("checkpoint-") and summary["best_step"] == 12
    assert [h["step"] for h in summary["history"]] == [12]
    from sentiment_nb.infer import load_model, predict
    assert predict(load_model(run_dir / "model"), ["great"])[0]["label"] in ("negative", "positive")


def test_torchrun_two_processes_gloo(splits_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = train_cmd("processed_dir", splits_dir, "run_dir", run_dir, "max_train_rows", 32, "max_validation_rows", 16,
                    "batch_size", 8, "max_input_length", 64, "device", "cpu", torchrun_procs=2)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((run_dir / "model" / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["threads"] == 1
    assert summary["best_step"] == 2, "2 processes x batch 8 should take 32 rows in 2 steps"
    assert proc.stdout.count("best model (epoch") == 1, "a rank other than 0 wrote or reported"
    from sentiment_nb.infer import load_model, predict
    assert predict(load_model(run_dir / "model"), ["great"])[0]["label"] in ("negative", "positive")


def test_linear_probe_head_is_what_fine_tuning_starts_from(splits_dir, tmp_path):
    "LP-FT: the probe's head goes into the Trainer's model; at a learning rate too small to move it, the trained model scores on validation what the probe scored."
    from sentiment_nb.train import PROBE_C, train_classifier
    summary, _ = train_classifier(tiny_params(splits_dir, tmp_path / "lp", linear_probe=True, learning_rate=1e-12,
                                              n_epochs=1, bf16=False, metric_for_best_model="accuracy"))
    probe = summary["linear_probe"]
    assert probe["rows"] == 64 and probe["C"] in PROBE_C and set(probe["validation_accuracy_by_C"]) == {str(c) for c in PROBE_C}
    assert abs(summary["best_validation"]["accuracy"] - probe["validation_accuracy"]) < 1e-4, (summary["best_validation"], probe)
    saved = json.loads((tmp_path / "lp" / "model" / "training_summary.json").read_text())
    assert saved["linear_probe"] == probe and saved["params"]["linear_probe"] is True
    from safetensors.torch import load_file
    w = load_file(str(tmp_path / "lp" / "model" / "model.safetensors"))
    head_w, head_b = w["classifier.weight"], w["classifier.bias"]                  # a binary probe: [-w/2, w/2], a fresh head is not
    assert (head_w[0] + head_w[1]).abs().max() < 1e-6 < head_w.abs().max() and abs(float(head_b.sum())) < 1e-6, head_w


def test_distillation_from_a_teacher_trains_on_gold_and_transfer_rows(splits_dir, tmp_path, monkeypatch):
    "A student trained on a real (tiny) teacher's probabilities over the training rows plus RT plot text."
    import pandas as pd
    from sentiment_nb.distill import near_duplicate_key
    from sentiment_nb.infer import load_model
    from sentiment_nb.train import train_classifier
    monkeypatch.setenv("SENTIMENT_NB_CACHE", str(tmp_path / "cache"))
    train_classifier(tiny_params(splits_dir, tmp_path / "teacher", max_train_rows=32, pooling="cls"))   # a [CLS] teacher
    teacher = tmp_path / "teacher" / "model"
    summary, history = train_classifier(tiny_params(splits_dir, tmp_path / "student", teacher_model=str(teacher),
                                                    transfer_data=["rt_plot"], max_transfer_rows=40,
                                                    distill_alpha=0.7, distill_temperature=2.0))
    d = summary["distillation"]
    assert d["n_gold"] == 64 and d["n_transfer"] + d["transfer_near_duplicates_dropped"] == 40 and d["n_transfer"] > 30
    assert summary["n_train"] == 64 + d["n_transfer"] and history["train_loss"].notna().all()
    assert len(list((tmp_path / "cache" / "teacher_probs").glob("*.npz"))) == 1      # scored once, cached
    held = {near_duplicate_key(t) for s in ("validation", "test") for t in pd.read_parquet(splits_dir / f"{s}.parquet")["text"]}
    assert held, "no held-out texts read"
    m = load_model(tmp_path / "student" / "model")
    assert m.labels == ["negative", "positive"] and type(m.model).__name__ == "BertMeanPoolingForSequenceClassification"  # a mean student
    again, _ = train_classifier(tiny_params(splits_dir, tmp_path / "student2", teacher_model=str(teacher),
                                            transfer_data=["rt_plot"], max_transfer_rows=40))
    assert again["distillation"]["n_transfer"] == d["n_transfer"]                    # the same fixed sample
    assert len(list((tmp_path / "cache" / "teacher_probs").glob("*.npz"))) == 1      # read back from the cache


def test_student_layers_makes_saves_and_serves_a_smaller_student(splits_dir, tmp_path, monkeypatch):
    "`student_layers` 2: stage 02 trains the model, then a 2-block student from it; the student reloads, exports to ONNX int8, serves through `predict` and 03 scores it beside its teacher."
    from sentiment_nb.evaluate import EvaluationParams, student_report
    from sentiment_nb.infer import load_model, predict_proba
    from sentiment_nb.train import train_classifier
    monkeypatch.setenv("SENTIMENT_NB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    summary, history = train_classifier(tiny_params(splits_dir, run, max_train_rows=32, student_layers=2,
                                                    transfer_data=["rt_plot"], max_transfer_rows=16))
    student_dir = run / "student"
    s = summary["student"]
    assert s["model_dir"] == str(student_dir) and s["student_of"] == {"layers": [2, 5], "of_layers": 6, "teacher": str(run / "model")}
    assert s["model_layers"] == 2 and s["n_train"] > 32 and s["distillation"]["n_transfer"] > 10
    assert json.loads((run / "model" / "training_summary.json").read_text())["student"]["model_layers"] == 2
    config = json.loads((student_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and (student_dir / "tokenizer.json").exists()
    assert (student_dir / "model.safetensors").stat().st_size < 0.8 * (run / "model" / "model.safetensors").stat().st_size
    assert history.attrs["student_history"] and not (run / "train-student").exists()
    m, st = load_model(run / "model"), load_model(student_dir)
    assert len(st.model.base_model.encoder.layer) == 2 and st.labels == m.labels
    texts = ["a wonderful, moving film", "dull and far too long"]
    out = subprocess.run([str(BIN / "sentiment-nb"), "predict", *texts, "--model", str(student_dir), "--variant", "onnx-int8",
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = np.array([[r["scores"]["negative"], r["scores"]["positive"]] for r in map(json.loads, out.stdout.splitlines())])
    assert np.abs(got - predict_proba(st, texts)).max() < 0.1
    y = np.array([1, 0])
    r = student_report(m, texts, y, predict_proba(m, texts), "rotten_tomatoes", EvaluationParams(ood_rows=16))
    assert r["model_dir"] == str(student_dir) and (r["model_layers"], r["teacher_layers"]) == (2, 6)
    assert abs(r["accuracy_gap"] - (r["teacher_accuracy"] - r["accuracy"])) < 1e-9 and r["ood_accuracy"] is not None
