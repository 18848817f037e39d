"""The teacher stage (02_teacher) through the real runner: it runs only when `teacher_params` asks for a teacher,
trains it with stage 02's code on the run's splits into the cache, links it to `<run_dir>/teacher`, stage 02
distils from it, and a later run on the same splits and recipe takes the teacher from the cache."""
import json

import pytest

from conftest import run_cli

TEACHER = "{max_train_rows: 32, max_validation_rows: 32, n_epochs: 1, batch_size: 16, max_input_length: 64, pooling: cls}"


def stages_of(run_dir):
    return [(s["stage"], s["status"]) for s in json.loads((run_dir / "manifest.json").read_text())["stages"]]


def headline(run_dir, stage):
    return json.loads((run_dir / "summaries" / f"{stage}.json").read_text())["headline"]


@pytest.mark.slow
def test_teacher_stage_trains_once_and_stage_02_distils_from_it(tmp_path):
    env = {"SENTIMENT_NB_CACHE": str(tmp_path / "cache")}
    reports, processed = tmp_path / "reports", tmp_path / "processed"
    common = ["-f", "params/tiny.yaml", "--reports-dir", reports, "-p", "processed_dir", processed,
              "-p", "teacher_params", TEACHER, "-p", "transfer_data", "[rt_plot]", "-p", "max_transfer_rows", "16"]
    first = run_cli("run", *common, "--stages", "01,02", "--run-id", "t1", env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    run = reports / "t1"
    assert stages_of(run) == [("01_preprocessing", "ok"), ("02_teacher", "ok"), ("02_training", "ok")]
    assert headline(run, "02_teacher")["trained"] == "in this run" and (run / "teacher" / "model.safetensors").exists()
    cached = list((tmp_path / "cache" / "teachers").iterdir())
    assert len(cached) == 1 and (cached[0] / "training_summary.json").exists() and not (run / "teacher-train").exists()
    teacher_summary = json.loads((run / "teacher" / "training_summary.json").read_text())
    assert teacher_summary["n_train"] == 32 and teacher_summary["params"]["pooling"] == "cls"
    model = json.loads((run / "model" / "training_summary.json").read_text())
    assert model["distillation"]["teacher_model"] == str(run / "teacher") and model["distillation"]["n_transfer"] > 10
    assert model["data_hash"] == teacher_summary["data_hash"] and model["params"]["pooling"] == "mean"   # 02's own recipe

    again = run_cli("run", *common, "--stages", "02", "--run-id", "t2", env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert stages_of(reports / "t2") == [("02_teacher", "ok"), ("02_training", "ok")]
    assert headline(reports / "t2", "02_teacher")["trained"] == "earlier (run t1), taken from the cache"
    assert list((tmp_path / "cache" / "teachers").iterdir()) == cached                   # not trained again
    assert len(list((tmp_path / "cache" / "teacher_probs").glob("*.npz"))) == 1          # nor scored again


def test_a_run_without_teacher_params_skips_the_stage_and_a_bad_recipe_is_named(tmp_path):
    env = {"SENTIMENT_NB_CACHE": str(tmp_path / "cache")}
    base = ["-f", "params/tiny.yaml", "--reports-dir", tmp_path / "reports", "-p", "processed_dir", tmp_path / "processed"]
    assert run_cli("run", *base, "--stages", "01", "--run-id", "splits", env=env).returncode == 0
    bad = run_cli("run", *base, "--stages", "02", "--run-id", "bad", "-p", "teacher_params", "{learning_rat: 1.0e-4}", env=env)
    assert bad.returncode != 0 and "'learning_rat' (did you mean 'learning_rate'?)" in bad.stderr
    assert stages_of(tmp_path / "reports" / "bad") == [("02_teacher", "failed")]          # 02 never ran on no teacher
    assert not (tmp_path / "cache" / "teachers").exists()


@pytest.mark.parametrize("params_file", ["default", "full", "student", "tune", "tiny"])
def test_every_params_file_is_accepted_and_full_yaml_asks_for_the_mpnet_teacher(root, params_file):
    "Each shipped recipe passes the runner's checks (names, types); only full.yaml runs 02_teacher, with a valid recipe."
    from sentiment_nb.pipeline import load_params, prepare_parameters, requested_stages, select_stages, stage_notebooks
    from sentiment_nb.teacher import TeacherParams, teacher_training_params
    every = stage_notebooks()
    params, per_stage, _ = prepare_parameters(every, load_params(root / "params" / f"{params_file}.yaml"))
    runs_teacher = "02_teacher" in requested_stages(select_stages(every, None), per_stage)
    assert runs_teacher == (params_file == "full")
    if runs_teacher:
        tp = teacher_training_params(TeacherParams.from_mapping(per_stage["02_teacher"]))
        assert (tp.model_name, tp.n_epochs) == ("mpnet", 1.0) and params["augment_copies"] == 4
