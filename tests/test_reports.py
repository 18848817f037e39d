"""The run's pages as a reviewer reads them: a code-free report page and a full page per stage, linked from
index.html, loading nothing from the network, with the logs on the full page only."""
import html, json, re

import nbformat
import pandas as pd

REMOTE_LOAD = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)
NOISE = ("Removed ", "HTTP Request", "LOAD REPORT", "address already in use", "TqdmWarning", "Loading weights")


def stages(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


def stderr_lines(notebook):
    "Plain lines (no control characters or characters HTML escapes) that the notebook's cells wrote to stderr."
    nb = nbformat.read(str(notebook), as_version=4)
    texts = [o["text"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    return {l.strip() for t in texts for l in t.split("\n")
            if len(l.strip()) >= 12 and re.fullmatch(r"[\w .,:;%|/()\[\]=+-]+", l.strip())}


def test_every_stage_has_a_code_free_report_and_a_full_page(tiny_run):
    run_dir = tiny_run["run_dir"]
    assert tiny_run["proc"].returncode == 0, tiny_run["proc"].stderr[-3000:]
    for s in stages(run_dir):
        stem = s["stage"]
        assert (s["html"], s["code_html"], s["executed"]) == (f"{stem}.html", f"{stem}.code.html", f"{stem}.ipynb")
        report, full = (run_dir / s["html"]).read_text(), (run_dir / s["code_html"]).read_text()
        assert 'jp-InputArea-editor"' not in report, f"{s['html']} shows code cells"
        assert full.count('jp-InputArea-editor"') >= 3, f"{s['code_html']} lacks the code cells"
        assert f'href="{stem}.code.html"' in report and f'href="{stem}.ipynb"' in report
        assert f'href="{stem}.html"' in full and f'href="{stem}.ipynb"' in full


def test_index_links_report_code_and_notebook_of_every_stage(tiny_run):
    run_dir = tiny_run["run_dir"]
    index = (run_dir / "index.html").read_text()
    for s in stages(run_dir):
        for target, name in ((s["html"], "report"), (s["code_html"], "code"), (s["executed"], "notebook")):
            assert f'href="{target}">{name}</a>' in index, (s["stage"], name)
            assert (run_dir / target).exists(), target


def test_no_page_loads_anything_from_the_network(tiny_run):
    pages = sorted(tiny_run["run_dir"].glob("*.html"))
    assert len(pages) == 1 + 2 * len(stages(tiny_run["run_dir"]))
    for page in pages:
        hits = REMOTE_LOAD.findall(page.read_text())
        assert not hits, f"{page.name} loads {hits[:3]} from the network"


def test_logs_are_on_the_full_page_only(tiny_run):
    run_dir, seen = tiny_run["run_dir"], 0
    for s in stages(run_dir):
        report, full = (run_dir / s["html"]).read_text(), (run_dir / s["code_html"]).read_text()
        for noise in NOISE:
            assert noise not in report, f"{s['html']} shows log noise {noise!r}"
        for line in stderr_lines(run_dir / s["executed"]):
            assert html.escape(line) in full, f"{s['code_html']} lost the stderr line {line!r}"
            assert html.escape(line) not in report, f"{s['html']} shows the stderr line {line!r}"
            seen += 1
    assert seen, "no stage wrote to stderr: nothing was checked"


def test_evaluation_section_says_what_was_skipped_and_shows_whole_texts(tiny_run):
    run_dir = tiny_run["run_dir"]
    index = (run_dir / "index.html").read_text()
    report = json.loads((run_dir / "metrics.json").read_text())
    cal = report["calibration"]
    assert (cal["status"], cal["validation_rows"], report["metrics"]["temperature"]) == ("skipped", 80, 1.0)
    assert report["metrics"]["ece_temperature_scaled"] == report["metrics"]["ece"]
    assert "skipped: 80 validation rows, fewer than the 100 a temperature needs" in index
    assert "push conditions" not in index, "an empty push-conditions heading shows though push is off"
    summary = json.loads((run_dir / "summaries" / "03_evaluation.json").read_text())
    mistakes = summary["tables"]["most confident mistakes"]
    test_texts = set(pd.read_parquet(tiny_run["processed_dir"] / "test.parquet")["text"])
    assert mistakes and all(m["text"] in test_texts for m in mistakes), "a mistake's text was cut"
