"""Inference throughput, latency, size and memory: the `transformers.pipeline("text-classification")` baseline
with default settings against each variant of `sentiment_nb.infer`, on the same test texts and the same model.

    .venv/bin/python bench/bench_infer.py                                   # newest reports/*/model, all variants
    .venv/bin/python bench/bench_infer.py --model reports/<run-id>/model --threads 2
    .venv/bin/python bench/bench_infer.py --variants onnx-int8 --skip-baseline
    .venv/bin/python bench/bench_infer.py --model reports/<run-id>/model --variants onnx-int8 \
        --student reports/<run-id>/student --rounds 3          # students beside their teacher, interleaved

With --student (a model folder made by stage 02's `student_layers`; repeatable) each student's
--student-variants run after the model's own variants, and every row carries `model_layers` and
`teacher_accuracy`: the accuracy of the model (the teacher, same variant, else fp32) on the same texts in
the same run. With --rounds N the whole sequence runs N times, interleaved, and each row reports the
medians over the rounds (texts/s, p50, p95; `rounds_texts_per_s` keeps each round's figure): the
pipeline baseline moves most with the load of a shared machine.

Each variant runs in its own process, one after the other (no thread pools left spinning between them): the
baseline, then fp32, bf16, int8, onnx, onnx-int8. Batch scoring is timed over all texts (best and median of
--repeats passes after a warm-up, and the CPU time per text, which a busy machine inflates less); single-text
latency over --latency-texts texts of at most 64 tokens, one at a time, tokenization included. Last, a fresh
`sentiment-nb predict --file ... --variant auto` process scores the texts: its peak RSS is the serving memory.
Prints the table and the ratios to the baseline; appends one JSON row per variant to bench/results/infer.jsonl.
Needs the splits of 01 in --processed-dir. The load average at start and end is recorded: on a shared machine
the figures move with it.
"""
from __future__ import annotations
import argparse, io, json, os, resource, statistics, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "infer.jsonl"
VARIANT_ORDER = ("pipeline", "fp32", "bf16", "int8", "onnx", "onnx-int8")


def machine() -> dict:
    "The machine a row was measured on (CPU model, cores, vector extensions)."
    sys.path.insert(0, str(ROOT))
    from sentiment_nb.infer import machine_description
    return machine_description()


def timed_passes(fn, repeats: int) -> list[tuple[float, float]]:
    "Wall and CPU seconds (all threads of this process) of `repeats` calls of fn."
    out = []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter(); fn(); out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def latency_ms(fn, texts) -> dict:
    "p50/p95 milliseconds of fn on one text at a time."
    lat = []
    for t in texts:
        t0 = time.perf_counter(); fn(t); lat.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(lat, n=20)
    return {"p50_ms": round(statistics.median(lat), 2), "p95_ms": round(q[18], 2)}


def pipeline_worker(model_dir: Path, texts, labels, lat_texts, repeats: int) -> dict:
    "The baseline: a default text-classification pipeline, one text after the other (a mean-pooling model through its registered class)."
    from transformers import pipeline
    from sentiment_nb.infer import register_model_dir
    register_model_dir(model_dir)                                      # plain transformers cannot build a mean-pooling head
    pipe = pipeline("text-classification", model=str(model_dir))
    label2id = pipe.model.config.label2id
    pipe(texts[:16])
    last = {}
    passes = timed_passes(lambda: last.update(out=pipe(texts)), repeats)
    preds = [label2id[r["label"]] for r in last["out"]]
    size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    return {"accuracy": sum(int(p == y) for p, y in zip(preds, labels)) / len(labels), "passes_s": passes,
            **latency_ms(lambda t: pipe(t), lat_texts), "size_mb": size / 2**20, "tokenize_s": None}


def variant_worker(variant: str, model_dir: Path, texts, labels, lat_texts, repeats: int, batch_size: int,
                   threads: int) -> dict:
    "One variant of sentiment_nb.infer: load (export when needed), score in batches, one at a time."
    from sentiment_nb import infer
    t0 = time.perf_counter()
    m = infer.load_model(model_dir, threads=threads, variant=variant)
    load_s = time.perf_counter() - t0
    infer.predict_proba(m, texts[:batch_size * 2], batch_size)
    last = {}
    passes = timed_passes(lambda: last.update(out=infer.predict_proba(m, texts, batch_size)), repeats)
    tok = min(timed_passes(lambda: m.encoder.encode_batch_fast(list(texts)), 3))[0]
    preds = last["out"].argmax(1)
    return {"accuracy": float((preds == labels).mean()), "passes_s": passes, "load_s": round(load_s, 2),
            **latency_ms(lambda t: infer.predict_proba(m, [t]), lat_texts), "size_mb": model_size(m) / 2**20,
            "tokenize_s": tok}


def model_size(m) -> int:
    "Bytes of the variant's weights: the ONNX file, the quantized state dict, or the safetensors."
    if m.variant.startswith("onnx"):
        from sentiment_nb.infer import onnx_cache_dir, ONNX_FILES
        return (onnx_cache_dir(m.model_dir) / ONNX_FILES[m.variant]).stat().st_size
    if m.variant == "int8":
        import torch
        buf = io.BytesIO(); torch.save(m.model.state_dict(), buf); return buf.tell()
    return sum(f.stat().st_size for f in Path(m.model_dir).glob("*.safetensors"))


def bench_texts(processed_dir: str, n: int, lat_n: int, model_dir: Path):
    "The first n test texts (all when fewer), their labels, and up to lat_n of them with at most 64 tokens."
    from sentiment_nb.data import load_splits
    from sentiment_nb.infer import load_text_encoder
    splits, _ = load_splits(processed_dir, names=("test",))
    test = splits["test"].head(n) if n else splits["test"]
    texts, labels = test["text"].astype(str).tolist(), test["label"].to_numpy()
    enc = load_text_encoder(model_dir, 512)
    short = [t for t, e in zip(texts, enc.encode_batch_fast(texts)) if len(e.ids) <= 64]
    return texts, labels, short[:lat_n]


def run_worker(args) -> dict:
    "Measure one variant in this process and return its figures."
    sys.path.insert(0, str(ROOT))
    from sentiment_nb.core import use_offline_hub
    use_offline_hub()
    if args.threads:
        import torch; torch.set_num_threads(args.threads)
    model_dir = Path(args.model)
    texts, labels, lat = bench_texts(args.processed_dir, args.n_texts, args.latency_texts, model_dir)
    if args.worker == "pipeline": r = pipeline_worker(model_dir, texts, labels, lat, args.repeats)
    else: r = variant_worker(args.worker, model_dir, texts, labels, lat, args.repeats, args.batch_size, args.threads)
    best, med = min(w for w, _ in r["passes_s"]), statistics.median(w for w, _ in r["passes_s"])
    cpu = min(c for _, c in r["passes_s"])
    return {"variant": args.worker, "n_texts": len(texts), "latency_texts": len(lat),
            "accuracy": round(100 * r["accuracy"], 2), "texts_per_s": round(len(texts) / best, 1),
            "texts_per_s_median": round(len(texts) / med, 1), "cpu_ms_per_text": round(1000 * cpu / len(texts), 2), "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"],
            "size_mb": round(r["size_mb"], 1), "load_s": r.get("load_s"),
            "tokenize_share": round(r["tokenize_s"] / best, 3) if r["tokenize_s"] else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def serving_rss(model_dir: Path, texts, variant: str, threads: int) -> dict:
    "Peak RSS and wall time of a fresh `sentiment-nb predict --file` process scoring the texts."
    import pandas as pd
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
        pd.DataFrame({"text": texts}).to_csv(src, index=False)
        cmd = [str(Path(sys.executable).parent / "sentiment-nb"), "predict", "--file", str(src), "--out", str(out),
               "--model", str(model_dir), "--variant", variant] + (["--threads", str(threads)] if threads else [])
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "SENTIMENT_NB_NO_PROGRESS": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err = proc.stderr.read().decode()
        if os.waitstatus_to_exitcode(status) != 0: raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
        return {"variant": f"serve ({variant})", "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 2),
                "n_texts": len(texts), "command": "sentiment-nb predict --file in.csv --out out.csv --variant " + variant}


def model_layers(model_dir: Path) -> int | None:
    "Encoder blocks of a model folder (its config's `num_hidden_layers`, or DistilBERT's `n_layers`)."
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config.get("num_hidden_layers") or config.get("n_layers")


MEDIAN_KEYS = ("texts_per_s", "texts_per_s_median", "cpu_ms_per_text", "p50_ms", "p95_ms", "load_average", "peak_rss_mb")

def median_row(rounds: list[dict]) -> dict:
    "One row of a variant measured in several rounds: the medians of the timing figures, each round's texts/s kept."
    row = dict(rounds[-1])
    for k in MEDIAN_KEYS:
        vals = [r[k] for r in rounds if r.get(k) is not None]
        if vals: row[k] = round(statistics.median(vals), 2)
    row["rounds_texts_per_s"] = [r["texts_per_s"] for r in rounds]
    return row


def newest_model() -> Path:
    "The newest run's model under reports/."
    sys.path.insert(0, str(ROOT))
    from sentiment_nb.infer import newest_model_dir
    return newest_model_dir(ROOT / "reports")


def print_table(rows: list[dict]) -> None:
    "The variant table with the ratio of texts/s to the baseline, the blocks of each model and its teacher's accuracy."
    base = next((r["texts_per_s"] for r in rows if r["variant"] == "pipeline"), None)
    print(f"\n{'model':<8} {'blocks':>6} {'variant':<10} {'accuracy':>8} {'teacher':>7} {'texts/s':>8} {'x base':>7} {'CPU ms/text':>11} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'size MB':>8} {'tok share':>9} {'RSS MB':>7}")
    for r in rows:
        ratio = f"{r['texts_per_s'] / base:.1f}" if base else "-"
        tok = f"{100 * r['tokenize_share']:.0f} %" if r.get("tokenize_share") else "-"
        teacher = f"{r['teacher_accuracy']:.2f}" if r.get("teacher_accuracy") is not None else "-"
        print(f"{r.get('model', 'model'):<8} {r.get('model_layers') or '-':>6} {r['variant']:<10} {r['accuracy']:>8.2f} {teacher:>7} "
              f"{r['texts_per_s']:>8.1f} {ratio:>7} {r['cpu_ms_per_text']:>11.2f} {r['p50_ms']:>7.2f} "
              f"{r['p95_ms']:>7.2f} {r['size_mb']:>8.1f} {tok:>9} {r['peak_rss_mb']:>7.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder, run id or s3://... (default: newest reports/*/model)")
    ap.add_argument("--processed-dir", default="data/processed", help="splits written by stage 01")
    ap.add_argument("--n-texts", type=int, default=2000, help="test texts to score (all when the split has fewer; 0: all)")
    ap.add_argument("--latency-texts", type=int, default=300, help="texts of <= 64 tokens timed one at a time")
    ap.add_argument("--variants", default=",".join(VARIANT_ORDER[1:]), help="comma-separated sentiment_nb.infer variants")
    ap.add_argument("--skip-baseline", action="store_true", help="do not run the transformers pipeline baseline")
    ap.add_argument("--batch-size", type=int, default=32, help="texts per batch for the variants")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime (0: their default)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over all texts per variant (best and median kept)")
    ap.add_argument("--serve-variant", default="auto", help="variant of the serving-memory process ('' to skip)")
    ap.add_argument("--student", action="append", default=[], help="a student model folder to measure beside the model (repeatable)")
    ap.add_argument("--student-variants", default="onnx-int8", help="comma-separated variants of each student")
    ap.add_argument("--rounds", type=int, default=1, help="run the whole sequence this many times, interleaved; rows report medians")
    ap.add_argument("--out", default=str(RESULTS), help="JSON lines file the rows are appended to")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args))); return 0
    sys.path.insert(0, str(ROOT))
    from sentiment_nb.infer import resolve_model_dir, resolve_variant
    model_dir = resolve_model_dir(args.model) if args.model else newest_model()
    names = ([] if args.skip_baseline else ["pipeline"]) + [v for v in args.variants.split(",") if v]
    jobs = [("model", model_dir, n) for n in names] + [
        ("student", resolve_model_dir(d), v) for d in args.student for v in args.student_variants.split(",") if v]
    when, mach, load0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), machine(), os.getloadavg()[0]
    print(f"model {model_dir}; {mach['cpu']}, {mach['cores']} cores, {' '.join(mach['extensions'])}; "
          f"threads {args.threads or 'default'}; load average {load0:.1f}; {args.rounds} round(s)", flush=True)
    per_job = {j: [] for j in jobs}
    for rnd in range(args.rounds):
        for job in jobs:
            kind, mdir, name = job
            cmd = [sys.executable, __file__, "--worker", name, "--model", str(mdir), *sum(([f"--{k.replace('_', '-')}", str(getattr(args, k))]
                   for k in ("processed_dir", "n_texts", "latency_texts", "batch_size", "threads", "repeats")), [])]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None: print(f"{name} ({mdir}) failed:\n{proc.stderr[-3000:]}", file=sys.stderr); return 1
            r = {**json.loads(line[7:]), "model": kind, "model_dir": str(mdir), "model_layers": model_layers(mdir),
                 "load_average": round(os.getloadavg()[0], 2)}
            per_job[job].append(r)
            print(f"round {rnd + 1}: {kind} {name}: {r['texts_per_s']} texts/s, accuracy {r['accuracy']} %, p50 {r['p50_ms']} ms", flush=True)
    rows = [median_row(rs) for rs in per_job.values()]
    teacher = {r["variant"]: r["accuracy"] for r in rows if r["model"] == "model"}
    for r in rows: r["teacher_accuracy"] = teacher.get(r["variant"], teacher.get("fp32"))
    print_table(rows)
    base = next((r for r in rows if r["variant"] == "pipeline"), None)
    fp32 = next((r for r in rows if r["variant"] == "fp32"), base)
    kept = [r for r in rows if r["variant"] != "pipeline" and r["model"] == "model" and fp32 and r["accuracy"] >= fp32["accuracy"] - 0.5]
    if kept:
        best = max(kept, key=lambda r: r["texts_per_s"])
        print(f"\nfastest variant within 0.5 points of fp32 accuracy: {best['variant']}"
              + (f" (x{best['texts_per_s'] / base['texts_per_s']:.1f} the pipeline's texts/s)" if base else "")
              + f"; variant 'auto' loads {resolve_variant('auto')}")
    serve = []
    if args.serve_variant:
        texts, _, _ = bench_texts(args.processed_dir, args.n_texts, 0, model_dir)
        for v in dict.fromkeys([args.serve_variant, "fp32"]):
            serve.append(serving_rss(model_dir, texts, v, args.threads))
            print(f"serving process ({v}): peak RSS {serve[-1]['peak_rss_mb']} MB, {serve[-1]['wall_s']} s for "
                  f"{len(texts)} texts from start to exit", flush=True)
    meta = {"date": when, "machine": mach, "threads": args.threads, "rounds": args.rounds,
            "batch_size": args.batch_size, "load_average_start": round(load0, 2), "load_average_end": round(os.getloadavg()[0], 2)}
    out = Path(args.out); out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in rows + serve:
            ratio = {"ratio_vs_pipeline": round(r["texts_per_s"] / base["texts_per_s"], 2)} if base and "texts_per_s" in r else {}
            f.write(json.dumps({**meta, **r, **ratio}) + "\n")
    print(f"rows appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
