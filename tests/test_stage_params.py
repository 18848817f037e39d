"""One declaration per parameter: each stage's params dataclass declares exactly the names and defaults of its
notebook's `parameters` cell (as papermill reads it), and the README's parameter tables are the ones written from
the dataclasses (`sentiment_nb.pipeline.write_readme_tables`)."""
import pytest

from conftest import ROOT
from sentiment_nb.pipeline import (STAGE_PARAMS, params_table, parameters_cell_differences, readme_table_span,
                                   stage_params_class, stage_notebooks)

STAGES = list(STAGE_PARAMS)


def params_class(stage: str):
    "The stage's params dataclass; skip while the stage's module does not define it yet."
    cls = stage_params_class(stage)
    if cls is None:
        module, name = STAGE_PARAMS[stage]
        pytest.skip(f"{module}.{name} does not exist yet (stage {stage} has no params dataclass)")
    return cls


def test_every_stage_notebook_has_a_params_class():
    missing = [s for s in stage_notebooks() if s not in STAGE_PARAMS]
    assert missing == [], f"stage(s) {missing} have no params dataclass: add (module, class) to pipeline.STAGE_PARAMS"


@pytest.mark.parametrize("stage", STAGES)
def test_dataclass_matches_the_parameters_cell(stage):
    cls = params_class(stage)
    assert parameters_cell_differences(cls, stage_notebooks()[stage]) == []


@pytest.mark.parametrize("stage", STAGES)
def test_every_parameter_has_a_meaning(stage):
    cls = params_class(stage)
    assert [n for n, h in cls.help().items() if not h.strip()] == []


@pytest.mark.parametrize("stage", STAGES)
def test_readme_table_is_written_from_the_dataclass(stage):
    cls = params_class(stage)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    a, b = readme_table_span(text, stage)
    assert text[a:b] == params_table(cls), (
        f"the README's table under '### {stage[:2]} ...' is not {cls.__name__}'s: run "
        f".venv/bin/python -c \"from sentiment_nb.pipeline import write_readme_tables; write_readme_tables()\"")


def test_runner_sends_one_meaning_per_name():
    "A name two stages declare has one default in both (so one value set for the run means one thing)."
    seen = {}
    for stage in STAGES:
        cls = stage_params_class(stage)
        if cls is None: continue
        for name, default in cls.defaults().items():
            seen.setdefault(name, {})[stage] = default
    clashes = {n: d for n, d in seen.items() if len({repr(v) for v in d.values()}) > 1}
    assert clashes == {}, clashes


def test_deprecated_names_still_run_a_stage(tmp_path):
    "The old 02 names reach stage 02 under the new ones, through the runner's parameter check."
    from sentiment_nb.pipeline import load_params, prepare_parameters
    params, per_stage, _ = prepare_parameters(stage_notebooks(), load_params(ROOT / "params" / "tiny.yaml"),
                                              [("best_model_dir", str(tmp_path))])
    assert per_stage["02_training"]["model_dir"] == str(tmp_path) and per_stage["03_evaluation"]["model_dir"] == str(tmp_path)
    assert "best_model_dir" not in params and per_stage["02_training"]["max_train_rows"] == 64
