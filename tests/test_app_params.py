"""Stage 04's parameters are declared once: `sentiment_nb.app.DemoParams` has exactly the names and defaults of the
notebook's `parameters` cell (as papermill reads it), and `sentiment-nb serve` takes its options from those fields."""
import argparse

from conftest import ROOT

from sentiment_nb.app import DemoParams
from sentiment_nb.cli import SERVE_ALIASES, build_parser
from sentiment_nb.pipeline import parameters_cell_differences


def test_demo_params_match_the_parameters_cell():
    assert parameters_cell_differences(DemoParams, ROOT / "nbs" / "04_demo.ipynb") == []


def serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def test_serve_options_are_the_demo_params():
    "Every parameter but the notebook-only ones is a `--name-with-dashes` option with the field's help, the old spelling kept."
    options = {o: a for a in serve_parser()._actions for o in a.option_strings}
    notebook_only = {"serve", "check_text", "run_dir"}
    for name, help in DemoParams.help().items():
        flag = "--" + name.replace("_", "-")
        assert (flag in options) == (name not in notebook_only), flag
        if name in notebook_only: continue
        assert options[flag].dest == name and options[flag].help.startswith(help.replace("%", "%%")), (flag, options[flag].help)
    for name, old in SERVE_ALIASES.items():
        assert all(options[o].dest == name for o in old), (name, old)
    assert options["--lazy"].dest == "load_model_at_start" and options["--no-log-texts"].dest == "log_texts"


def test_serve_builds_the_same_demo_params_the_notebook_does():
    args = build_parser().parse_args(["serve", "--model", "r1", "--port", "0", "--lazy", "--no-log-texts", "--variant", "fp32",
                                      "--max-text-chars", "100", "--idle-unload-minutes", "0"])
    assert DemoParams.from_mapping(vars(args)) == DemoParams.from_mapping(
        {"model_dir": "r1", "port": 0, "load_model_at_start": False, "log_texts": False, "model_variant": "fp32",
         "max_text_chars": 100, "idle_unload_minutes": 0, "prediction_log": "reports/predictions.sqlite"})
