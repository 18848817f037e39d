"""Batch scoring throughput: `sentiment-nb predict --engine ray` against `--engine local` on the same rows, in one
run, and the Ray job with 1 and with 2 actors.

    .venv/bin/python bench/bench_scoring.py                                  # 20,000 rows, the newest run's model
    .venv/bin/python bench/bench_scoring.py --model reports/<run-id>/model --rows 20000 --block-rows 2500

Each command runs as a fresh process, one after the other, on one generated parquet file of short reviews
(`--block-rows` rows per Ray block). Timed end to end (what a user waits for: imports, model load, Ray start and
stop); the Ray rows also give the job's own rows/s from its `_SUCCESS` summary. The ONNX export is made before
timing. Prints the table and the ratios; appends one JSON row to bench/results/scoring.jsonl with the load
average at start and end: on a shared machine the figures move with it.
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scoring.jsonl"
CLI = Path(sys.executable).parent / "sentiment-nb"
WORDS = "good bad great awful fine dull moving boring fun slow warm flat sharp tired bright cast plot ending".split()


def make_rows(path: Path, n: int, seed: int = 0) -> Path:
    "n generated short reviews (4-24 words) as one parquet file."
    import numpy as np, pandas as pd
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, rng.integers(4, 25))) for _ in range(n)]
    pd.DataFrame({"id": range(n), "text": texts}).to_parquet(path, index=False, row_group_size=2500)
    return path


def timed(args: list[str]) -> float:
    "Wall seconds of one `sentiment-nb` command (it must succeed)."
    t0 = time.perf_counter()
    proc = subprocess.run([str(CLI), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "SENTIMENT_NB_NO_PROGRESS": "1"})
    if proc.returncode: raise SystemExit(f"sentiment-nb {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder or run id (default: the newest run's model)")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--block-rows", type=int, default=2500)
    ap.add_argument("--variant", default="auto")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from sentiment_nb.infer import load_model, machine_description, resolve_model_dir
    model = resolve_model_dir(a.model)
    load_model(model, variant=a.variant)                                    # the ONNX export, before any timing
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rows = make_rows(d / "rows.parquet", a.rows)
        common = ["--model", model, "--variant", a.variant]
        local_s = timed(["predict", "--file", rows, "--out", d / "local.parquet", *common])
        ray = {}
        for actors in (1, 2):
            out = d / f"ray-{actors}"
            s = timed(["predict", "--engine", "ray", rows, "--out", out, "--num-actors", actors,
                       "--block-rows", a.block_rows, *common])
            ray[actors] = {"wall_s": round(s, 1), "rows_per_s": round(a.rows / s, 1),
                           "job_rows_per_s": json.loads((out / "_SUCCESS").read_text())["rows_per_s"]}
    row = {"bench": "scoring", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {**machine_description(), "cores": os.cpu_count()}, "model_dir": str(model), "variant": a.variant,
           "rows": a.rows, "block_rows": a.block_rows, "load_average_start": round(load_start, 2),
           "load_average_end": round(os.getloadavg()[0], 2),
           "local": {"wall_s": round(local_s, 1), "rows_per_s": round(a.rows / local_s, 1)},
           "ray_1_actor": ray[1], "ray_2_actors": ray[2],
           "ratio_ray_1_vs_local": round(local_s / ray[1]["wall_s"], 2),
           "ratio_ray_2_vs_local": round(local_s / ray[2]["wall_s"], 2),
           "ratio_2_vs_1_actors": round(ray[1]["wall_s"] / ray[2]["wall_s"], 2)}
    print(f"{'engine':<16}{'wall s':>8}{'rows/s':>9}{'job rows/s':>12}")
    print(f"{'local':<16}{row['local']['wall_s']:>8}{row['local']['rows_per_s']:>9}{'':>12}")
    for k in ("ray_1_actor", "ray_2_actors"): print(f"{k:<16}{row[k]['wall_s']:>8}{row[k]['rows_per_s']:>9}{row[k]['job_rows_per_s']:>12}")
    print(f"ray(1)/local {row['ratio_ray_1_vs_local']}x, ray(2)/local {row['ratio_ray_2_vs_local']}x, "
          f"2 vs 1 actors {row['ratio_2_vs_1_actors']}x; load average {row['load_average_start']} -> {row['load_average_end']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f: f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
