"""Accuracy of a training recipe as the mean and spread of several seeds, through the pipeline's own stages.

    .venv/bin/python bench/bench_accuracy.py --recipe default                      # params/default.yaml, seeds 1 2 3
    .venv/bin/python bench/bench_accuracy.py --recipe full --seeds 1 2 3
    .venv/bin/python bench/bench_accuracy.py --recipe lr3e-5 -f params/full.yaml -p learning_rate 3e-5
    .venv/bin/python bench/bench_accuracy.py --recipe tiny -f params/tiny.yaml --seeds 1 2   # a quick check

A recipe is a params file plus `-p NAME VALUE` overrides. Stage 01 runs once (with the recipe's own `seed`,
so every seed trains and is scored on the same splits); then for each seed stages 02 and 03 run as
`sentiment-nb run --stages 02,03 -p seed S` into `reports/accuracy-<recipe>-s<S>-<time>/` (no push). Test
rows are scored once per seed, after stage 02 picked its epoch on validation. Prints per seed and as
mean +- std (sample std over seeds): test accuracy and macro F1, validation accuracy, out-of-domain accuracy
(`ood_accuracy` in metrics.json, where stage 03 reports it), training seconds; appends one JSON row per
recipe to bench/results/accuracy.jsonl. One accuracy figure on the 1,276-row test split has a 95 % interval
of about +-2 points: compare means of at least 3 seeds, never single runs.
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "accuracy.jsonl"
CLI = [sys.executable, "-c", "import sys; from sentiment_nb.cli import main; sys.exit(main(sys.argv[1:]))"]


def sentiment_nb(args: list[str], log_path: Path) -> None:
    "Run one `sentiment-nb` command, its output in `log_path`; raise with the log's tail when it fails."
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w") as log:
        rc = subprocess.run(CLI + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc: raise SystemExit(f"sentiment-nb {' '.join(args)} failed (exit {rc}):\n" + log_path.read_text()[-3000:])


def seed_figures(run_dir: Path) -> dict:
    "Test, validation and out-of-domain figures and training time of one finished 02+03 run."
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "model" / "training_summary.json").read_text())
    m = metrics["metrics"]
    return {"run_id": run_dir.name, "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"],
            "validation_accuracy": summary["best_validation"]["accuracy"], "ood_accuracy": m.get("ood_accuracy"),
            "train_seconds": summary["train_seconds"], "n_train": summary["n_train"],
            "best_epoch": summary.get("best_epoch"), **student_figures(metrics.get("student"))}


def student_figures(student: dict | None) -> dict:
    "The student's test accuracy and its gap to its teacher (stage 02's `student_layers`), none without a student."
    if not student: return {}
    return {"student_test_accuracy": student["accuracy"], "student_accuracy_gap": student["accuracy_gap"],
            "student_ood_accuracy": student.get("ood_accuracy"), "student_validation_accuracy": student.get("validation_accuracy"),
            "student_layers": student["model_layers"]}


def mean_std(values: list) -> tuple[float | None, float | None]:
    "Mean and sample standard deviation of the values that are not None (std 0 for one value)."
    vals = [v for v in values if v is not None]
    if not vals: return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summary_row(recipe: str, params_file: str, overrides: list, seeds: list[int], per_seed: list[dict], load: tuple) -> dict:
    "The accuracy.jsonl row of one recipe."
    row = {"bench": "accuracy", "recipe": recipe, "params_file": params_file, "overrides": overrides, "seeds": seeds,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
           "load_average_start": load[0], "load_average_end": os.getloadavg()[0], "per_seed": per_seed,
           "n_train": per_seed[0]["n_train"]}
    student = ("student_test_accuracy", "student_accuracy_gap", "student_ood_accuracy") if "student_test_accuracy" in per_seed[0] else ()
    for key in ("test_accuracy", "test_macro_f1", "validation_accuracy", "ood_accuracy", "train_seconds", *student):
        row[key] = [s.get(key) for s in per_seed]
        row[f"{key}_mean"], row[f"{key}_std"] = mean_std(row[key])
    return row


def git_commit() -> str | None:
    "The checkout's commit (with `+dirty` for uncommitted changes), or None outside git."
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nbs", "sentiment_nb", "params"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError): return None


def pct(v: float | None) -> str:
    return "   -  " if v is None else f"{100 * v:6.2f}"


def print_table(row: dict) -> None:
    "Per seed and mean +- std, in percent."
    print(f"\nrecipe {row['recipe']} ({row['params_file']} {' '.join(map(str, row['overrides']))}), n_train {row['n_train']}")
    print(" seed   test acc  macro F1  val acc   ood acc  train s")
    for seed, s in zip(row["seeds"], row["per_seed"]):
        print(f" {seed:>4}   {pct(s['test_accuracy'])}    {pct(s['test_macro_f1'])}   {pct(s['validation_accuracy'])}"
              f"   {pct(s['ood_accuracy'])}  {s['train_seconds']:7.0f}")
    cells = []
    for key in ("test_accuracy", "test_macro_f1", "validation_accuracy", "ood_accuracy"):
        m, sd = row[f"{key}_mean"], row[f"{key}_std"]
        cells.append("      -     " if m is None else f"{100 * m:5.2f}+-{100 * sd:4.2f}")
    print(f" mean   {'  '.join(cells)}  {row['train_seconds_mean']:7.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, help="name of the recipe in the results (default params file: params/<recipe>.yaml)")
    ap.add_argument("-f", "--params-file", default=None, help="parameters file (default: params/<recipe>.yaml)")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override one parameter of the recipe, as `sentiment-nb run -p`")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds (at least 3 for a claim)")
    ap.add_argument("--processed-dir", default=None, help="splits folder (default: data/accuracy/<recipe>)")
    ap.add_argument("--reports-dir", default="reports", help="where the per-seed run folders go")
    ap.add_argument("--no-save", action="store_true", help="print only, append nothing to accuracy.jsonl")
    ap.add_argument("--stamp", default=None, help="continue the bench of this time stamp (in its run ids): seeds whose "
                                                  "run finished are read back, not trained again, and 01 is not rerun")
    args = ap.parse_args(argv)
    params_file = args.params_file or f"params/{args.recipe}.yaml"
    if not (ROOT / params_file).exists() and not Path(params_file).exists(): ap.error(f"no parameters file {params_file}")
    processed = args.processed_dir or f"data/accuracy/{args.recipe}"
    base = ["run", "-f", params_file, "--reports-dir", args.reports_dir, "-p", "processed_dir", processed,
            "-p", "push_model_s3.enabled", "false"] + [x for p in args.param for x in ("-p", *p)]
    stamp, load = args.stamp or time.strftime("%Y%m%d-%H%M%S"), os.getloadavg()
    logs = ROOT / args.reports_dir / f"accuracy-{args.recipe}-{stamp}-logs"; logs.mkdir(parents=True, exist_ok=True)
    if not args.stamp:
        print(f"splits (stage 01) -> {processed}", flush=True)
        sentiment_nb(base + ["--stages", "01", "--run-id", f"accuracy-{args.recipe}-{stamp}-splits"], logs / "01.log")
    per_seed = []
    for seed in args.seeds:
        run_id = f"accuracy-{args.recipe}-s{seed}-{stamp}"
        t0, done = time.time(), (ROOT / args.reports_dir / run_id / "metrics.json").exists()
        if done: print(f"seed {seed}: finished earlier in {run_id}, read back", flush=True)
        elif args.stamp and (ROOT / args.reports_dir / run_id).exists():   # a killed run: continue it from its stage,
            from sentiment_nb.train import latest_complete_checkpoint      # from its last checkpoint where it saved one
            saved = latest_complete_checkpoint(ROOT / args.reports_dir / run_id / "train")
            sentiment_nb(["run", "--resume", run_id, "--reports-dir", args.reports_dir, "-p", "resume_from_checkpoint",
                          "true" if saved else "false"], logs / f"seed{seed}.resume.log")
        else:
            sentiment_nb(base + ["--stages", "02,03", "--run-id", run_id, "-p", "seed", str(seed)], logs / f"seed{seed}.log")
        per_seed.append(seed_figures(ROOT / args.reports_dir / run_id))
        print(f"seed {seed}: test {pct(per_seed[-1]['test_accuracy'])} % in {time.time() - t0:.0f} s", flush=True)
    row = summary_row(args.recipe, params_file, args.param, args.seeds, per_seed, load)
    print_table(row)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f: f.write(json.dumps(row) + "\n")
        print(f"\nappended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
