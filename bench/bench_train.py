"""Training throughput of stage 02: the fp32 baseline (every batch padded to 128 tokens, random batches, plain
AdamW) against the fast configuration, side by side on the same rows, each in its own process.

    .venv/bin/python bench/bench_train.py                          # baseline and fast on 3,000 training rows
    .venv/bin/python bench/bench_train.py --train-rows 0           # the whole training split (slow baseline)
    .venv/bin/python bench/bench_train.py --configs baseline fast fast_b64 fast_compile

Prints samples/s, seconds per epoch, validation accuracy after the same epochs, the share of the machine's
measured GEMM peak the useful (non-padding) FLOPs reach, peak RSS and the ratio to the baseline; appends one
JSON row to bench/results/train.jsonl. Needs the splits of 01 in --processed-dir (`sentiment-nb run --stages 01`).
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "train.jsonl"
BASELINE = dict(dynamic_padding=False, group_by_length=False, bf16=False, fused_optimizer=False, cls_only_last_layer=False)
FAST = dict(dynamic_padding=True, group_by_length=True, bf16="auto", fused_optimizer=True, cls_only_last_layer=True)
CONFIGS = {
    "baseline": BASELINE,
    "dynamic_padding": {**BASELINE, "dynamic_padding": True},
    "dynamic_grouped": {**BASELINE, "dynamic_padding": True, "group_by_length": True},
    "dynamic_grouped_fused": {**FAST, "cls_only_last_layer": False},  # + bf16 autocast and the fused AdamW
    "fast": FAST,                                                   # + the [CLS]-only last layer
    "fast_b64": {**FAST, "batch_size": 64, "learning_rate": 1.4e-4},  # larger batch, learning rate x sqrt(2)
    "fast_compile": {**FAST, "torch_compile": True},
    "fast_frozen_emb": {**FAST, "freeze_embeddings": True},
    "fast_frozen_emb_b64": {**FAST, "freeze_embeddings": True, "batch_size": 64, "learning_rate": 1.4e-4},
}


def run_worker(name: str, args) -> dict:
    "Train one configuration in this process and return its figures."
    sys.path.insert(0, str(ROOT))
    from sentiment_nb.core import use_offline_hub
    from sentiment_nb.train import TrainingParams, train_classifier
    use_offline_hub()
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(processed_dir=args.processed_dir, run_dir=tmp, max_train_rows=args.train_rows,
                      max_validation_rows=args.validation_rows, n_epochs=args.epochs, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, max_input_length=args.max_input_length,
                      num_threads=args.threads, seed=args.seed)
        p = TrainingParams(**{**common, **CONFIGS[name]})
        summary, _ = train_classifier(p)
    return {"config": name, "settings": CONFIGS[name], "samples_per_second": summary["samples_per_second"],
            "seconds_per_epoch": summary["seconds_per_epoch"], "train_seconds": summary["train_seconds"],
            "validation_accuracy": summary["best_validation"]["accuracy"],
            "validation_macro_f1": summary["best_validation"]["macro_f1"], "n_train": summary["n_train"],
            "mean_train_tokens": summary["mean_train_tokens"], "bf16": summary["bf16"], "threads": summary["threads"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def endless_batches(trainer):
    "The trainer's training batches, epoch after epoch."
    while True: yield from trainer.get_train_dataloader()


def interleaved_throughput(names: list[str], args, steps: int) -> dict[str, dict]:
    """Samples/s of each configuration's real Trainer step (forward, backward, clipping, optimizer), the
    configurations taking turns step by step in one process, so that load from other processes hits them alike."""
    sys.path.insert(0, str(ROOT))
    import torch
    from sentiment_nb.core import use_offline_hub
    from sentiment_nb.train import TrainingParams, build_trainer
    use_offline_hub()
    runs = {}
    for name in names:
        common = dict(processed_dir=args.processed_dir, run_dir=tempfile.mkdtemp(), max_train_rows=steps * 64,
                      max_validation_rows=16, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      max_input_length=args.max_input_length, num_threads=args.threads, seed=args.seed)
        trainer, ctx = build_trainer(TrainingParams(**{**common, **CONFIGS[name]}))
        trainer.create_optimizer_and_scheduler(num_training_steps=steps + 2)
        trainer.model.train()
        runs[name] = dict(trainer=trainer, batches=endless_batches(trainer), seconds=0.0, samples=0,
                          info=dict(mean_train_tokens=ctx["mean_tokens"], bf16=ctx["bf16"], threads=ctx["threads"]))

    def step(r) -> int:
        t, batch = r["trainer"], next(r["batches"])
        t.training_step(t.model, batch)
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.args.max_grad_norm)
        t.optimizer.step(); t.lr_scheduler.step(); t.optimizer.zero_grad(set_to_none=True)
        return len(batch["labels"])

    for i in range(steps + 1):                      # the first round warms up and is not counted
        for name, r in runs.items():
            t0 = time.perf_counter(); n = step(r); dt = time.perf_counter() - t0
            if i: r["seconds"] += dt; r["samples"] += n
    return {name: {**r["info"], "samples_per_second": r["samples"] / r["seconds"]} for name, r in runs.items()}


def gemm_peak(threads: int, dtype_name: str, n: int = 1024, seconds: float = 1.5) -> float:
    "Measured FLOP/s of square matrix products on this machine (the practical compute bound)."
    import torch
    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3): a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds: a @ b; count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - t0)


def train_flops_per_token(model_name: str, mean_tokens: float) -> float:
    "Training FLOPs per real token: 6 x encoder parameters plus attention (scores and weighted sum), fwd + bwd."
    from transformers import AutoConfig
    from sentiment_nb.core import resolve_model_name
    c = AutoConfig.from_pretrained(resolve_model_name(model_name))
    per_layer = 4 * c.hidden_size ** 2 + 2 * c.hidden_size * c.intermediate_size
    return c.num_hidden_layers * (6 * per_layer + 12 * mean_tokens * c.hidden_size)


def machine() -> dict:
    "The machine a row was measured on (CPU model, cores, vector extensions)."
    sys.path.insert(0, str(ROOT))
    from sentiment_nb.infer import machine_description
    return machine_description()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["baseline", "fast"], choices=list(CONFIGS))
    ap.add_argument("--processed-dir", default=str(ROOT / "data" / "processed"))
    ap.add_argument("--train-rows", type=int, default=3000, help="training rows (0: the whole split); stage 02's max_train_rows")
    ap.add_argument("--validation-rows", type=int, default=0, help="validation rows (0: the whole split); stage 02's max_validation_rows")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--max-input-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-save", action="store_true", help="print only, append no row to the results file")
    ap.add_argument("--interleaved-steps", type=int, default=0,
                    help="time N training steps of every configuration taking turns in one process (robust on a busy "
                         "machine) instead of training each for whole epochs")
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args.worker, args)), flush=True)
        return 0

    started, load_before = datetime.now(timezone.utc), os.getloadavg()
    rows = []
    if args.interleaved_steps:
        print(f"interleaved: {args.interleaved_steps} steps of each configuration, taking turns ...", flush=True)
        inter = interleaved_throughput(args.configs, args, args.interleaved_steps)
        rows = [{"config": n, "settings": CONFIGS[n], "mode": f"interleaved, {args.interleaved_steps} steps",
                 "seconds_per_epoch": None, "validation_accuracy": None, "peak_rss_mb": None, **inter[n]} for n in args.configs]
    for name in [] if args.interleaved_steps else args.configs:
        cmd = [sys.executable, __file__, "--worker", name] + [a for a in sys.argv[1:] if a not in args.configs
                                                                 and a != "--configs"]
        print(f"[{name}] training ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return 1
        rows.append(json.loads(line[7:]))
        r = rows[-1]
        print(f"[{name}] {r['samples_per_second']:.1f} samples/s, {r['seconds_per_epoch']:.0f} s/epoch, "
              f"validation accuracy {r['validation_accuracy']:.4f}, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)

    import torch
    threads = rows[0]["threads"]
    peaks = {d: gemm_peak(threads, d) for d in ("float32", "bfloat16")}
    base = next((r for r in rows if r["config"] == "baseline"), rows[0])
    print(f"\nmachine GEMM peak on {threads} threads: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s; load average before {load_before[0]:.1f}")
    print(f"{'config':16} {'samples/s':>10} {'x base':>7} {'s/epoch':>8} {'val acc':>8} {'useful GFLOP/s':>15} "
          f"{'of peak':>8} {'RSS MB':>7}")
    for r in rows:
        flops = train_flops_per_token("embedded", r["mean_train_tokens"]) * r["mean_train_tokens"] * r["samples_per_second"]
        peak = peaks["bfloat16" if r["bf16"] else "float32"]
        r.update(ratio_to_baseline=round(r["samples_per_second"] / base["samples_per_second"], 2),
                 useful_gflops=round(flops / 1e9, 1), fraction_of_gemm_peak=round(flops / peak, 3))
        fmt = lambda v, spec: "-" if v is None else format(v, spec)
        print(f"{r['config']:16} {r['samples_per_second']:10.1f} {r['ratio_to_baseline']:7.2f} "
              f"{fmt(r['seconds_per_epoch'], '8.0f'):>8} {fmt(r['validation_accuracy'], '8.4f'):>8} "
              f"{r['useful_gflops']:15.1f} {r['fraction_of_gemm_peak']:8.1%} {fmt(r['peak_rss_mb'], '7.0f'):>7}")
    row = {"bench": "train", "date": started.isoformat(timespec="seconds"), "machine": machine(),
           "torch": torch.__version__, "load_average_before": round(load_before[0], 2),
           "load_average_after": round(os.getloadavg()[0], 2), "args": {k: v for k, v in vars(args).items() if k != "worker"},
           "gemm_peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()}, "results": rows}
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f: f.write(json.dumps(row) + "\n")
        print(f"appended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
