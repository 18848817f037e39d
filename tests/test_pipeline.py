"The papermill pipeline end to end: reports, manifest, figures, failures that keep earlier work, resume."
import json, os, subprocess, sys
from pathlib import Path

from conftest import BIN, ROOT, run_cli


def test_tiny_run_passes_every_stage(tiny_run):
    proc, run_dir = tiny_run["proc"], tiny_run["run_dir"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    from sentiment_nb.pipeline import ON_REQUEST_STAGES, REQUESTED_BY_PARAMETER   # 05 when asked, 02_teacher with teacher_params
    stages = sorted(p.stem for p in (ROOT / "nbs").glob("0[0-9]_*.ipynb") if p.stem not in {*ON_REQUEST_STAGES, *REQUESTED_BY_PARAMETER})
    assert ON_REQUEST_STAGES and [s["stage"] for s in manifest["stages"]] == stages and "02_teacher" not in stages
    assert all(s["status"] == "ok" for s in manifest["stages"]) and manifest["status"] == "ok"
    assert manifest["data_hash"] and manifest["package_versions"]["torch"] and manifest["finished"]
    assert manifest["params"]["max_rows"] == 400


def test_reports_hold_html_and_figures(tiny_run):
    run_dir = tiny_run["run_dir"]
    index = (run_dir / "index.html").read_text()
    for stage in json.loads((run_dir / "manifest.json").read_text())["stages"]:
        html = run_dir / stage["html"]
        assert html.exists() and f'href="{stage["html"]}"' in index
    eda = (run_dir / "00_eda.html").read_text()
    assert eda.count("data:image/png;base64") >= 4, "EDA figures are not embedded in its HTML report"
    for fig in ("eda_class_balance", "eda_length_tokens", "eda_top_words"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 5000
        assert f'src="figures/{fig}.png"' in index
    assert "train rows" in index and "rows per split and class" in index
    # executed notebooks carry the injected parameters, never under nbs/
    nb = json.loads((run_dir / "01_preprocessing.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
    assert not list((ROOT / "nbs").glob("**/*.html"))


def test_splits_written_with_description(tiny_run):
    meta = json.loads((tiny_run["processed_dir"] / "splits.json").read_text())
    assert meta["splits"] == {"train": 240, "validation": 80, "test": 80}
    assert meta["id2label"] == {"0": "negative", "1": "positive"}
    assert all((tiny_run["processed_dir"] / f"{s}.parquet").exists() for s in meta["splits"])


def test_unknown_parameter_fails_before_any_stage(tmp_path):
    proc = run_cli("run", "-f", "params/tiny.yaml", "-p", "tset_size", "0.2", "--reports-dir", tmp_path)
    assert proc.returncode == 2
    assert "unknown parameter(s) 'tset_size' (did you mean 'test_size'?)" in proc.stderr
    assert not list(tmp_path.iterdir()), "a run folder was made for a run that never started"


def test_failed_stage_keeps_earlier_outputs_and_resume_finishes(tmp_path):
    common = ["--reports-dir", tmp_path, "--run-id", "r", "--stages", "00,01", "-p", "processed_dir", tmp_path / "p"]
    proc = run_cli("run", "-f", "params/tiny.yaml", "-p", "validation_size", "0.9", *common)
    assert proc.returncode == 1
    assert "stage 01_preprocessing (01_preprocessing.ipynb) failed in cell" in proc.stderr
    assert "leaves no training rows" in proc.stderr and "--resume r" in proc.stderr
    run_dir = tmp_path / "r"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [(s["stage"], s["status"]) for s in manifest["stages"]] == [("00_eda", "ok"), ("01_preprocessing", "failed")]
    assert (run_dir / "00_eda.html").exists() and (run_dir / "01_preprocessing.html").exists()
    assert "failed" in (run_dir / "index.html").read_text()
    eda_mtime = (run_dir / "00_eda.ipynb").stat().st_mtime

    proc = run_cli("run", "--resume", "r", "--reports-dir", tmp_path, "-p", "validation_size", "0.2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok" and [s["status"] for s in manifest["stages"]] == ["ok", "ok"]
    assert (run_dir / "00_eda.ipynb").stat().st_mtime == eda_mtime, "resume ran a stage that had passed"


def test_plain_papermill_runs_a_stage_with_its_defaults_overridden(tmp_path):
    out = tmp_path / "01.ipynb"
    proc = subprocess.run([str(BIN / "papermill"), str(ROOT / "nbs/01_preprocessing.ipynb"), str(out),
                           "-p", "max_rows", "300", "-p", "processed_dir", str(tmp_path / "p"),
                           "-p", "run_dir", str(tmp_path / "run"), "--cwd", str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "p" / "splits.json").read_text())
    assert sum(meta["splits"].values()) == 300
    assert (tmp_path / "run" / "summaries" / "01_preprocessing.json").exists()


def test_every_parameters_cell_parses_fully():
    "papermill skips a line it cannot parse (e.g. '=' or ';' in its comment) and then ignores `-p` for it."
    import papermill as pm
    for nb_path in sorted((ROOT / "nbs").glob("0[0-9]_*.ipynb")):
        nb = json.loads(nb_path.read_text())
        cells = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
        assert len(cells) == 1, f"{nb_path.name} needs exactly one cell tagged 'parameters'"
        lines = [l for l in "".join(cells[0]["source"]).splitlines() if l.strip() and not l.lstrip().startswith("#")]
        assert len(pm.inspect_notebook(str(nb_path))) == len(lines), f"{nb_path.name}: a parameter line does not parse"
        assert all("  # " in l for l in lines), f"{nb_path.name}: every parameter needs a trailing comment"


def test_run_sections_are_skipped_by_nbdev_test():
    "The Run section of a stage is the real job: every code cell after '## Run' carries `#| slow`."
    for nb_path in sorted((ROOT / "nbs").glob("0[0-9]_*.ipynb")):
        cells = json.loads(nb_path.read_text())["cells"]
        starts = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "".join(c["source"]).lstrip().startswith("## Run")]
        assert starts, f"{nb_path.name} has no '## Run' section"
        for c in cells[starts[0]:]:
            if c["cell_type"] == "code":
                assert "".join(c["source"]).lstrip().startswith("#| slow"), f"{nb_path.name}: run cell without #| slow"
