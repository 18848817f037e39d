"""Cost and faithfulness of the two explanation methods of `sentiment_nb.explain` on the same test texts and model:
Integrated Gradients (captum's LayerIntegratedGradients on the word embeddings, fp32 torch) at a few `n_steps`,
and occlusion (each word deleted in turn, every variant of a text scored as one batch) with the ONNX int8 model
the demo serves and with fp32 torch.

    .venv/bin/python bench/bench_explain.py --model reports/<run-id>/model --processed-dir data/processed
    .venv/bin/python bench/bench_explain.py --model ... --texts 40 --steps 8 16 32 --k 2 --threads 2

Prints, per method, milliseconds per text (texts explained 8 at a time, after a warm-up) and the faithfulness
figures (mean drop of the predicted class's probability when each text's top-k words are deleted, against k
random words, and the gap); appends one JSON row per method to bench/results/explain.jsonl. The load average at
start and end is recorded: on a shared machine the times move with it.
"""
from __future__ import annotations
import argparse, json, os, sys, time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "explain.jsonl"


def measure(m, texts, method, n_steps, k, batch_size) -> dict:
    "Milliseconds per text of explaining `texts` (after one warm-up batch) and the faithfulness figures."
    from sentiment_nb.explain import explain_batch, faithfulness
    explain_batch(m, texts[:batch_size], None, method, n_steps, batch_size)
    t0 = time.perf_counter(); explain_batch(m, texts, None, method, n_steps, batch_size); wall = time.perf_counter() - t0
    return {"method": method, "variant": m.variant, "n_steps": n_steps if method == "ig" else None,
            "ms_per_text": round(1000 * wall / len(texts), 1), **faithfulness(m, texts, k, method, n_steps, 0, batch_size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="trained model folder")
    ap.add_argument("--processed-dir", default="data/processed", help="splits of 01: the texts are the first of the test split")
    ap.add_argument("--texts", type=int, default=40)
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch
    torch.set_num_threads(a.threads)
    from sentiment_nb.data import load_splits
    from sentiment_nb.infer import load_model, machine_description
    texts = load_splits(a.processed_dir)[0]["test"]["text"].tolist()[:a.texts]
    load_start = os.getloadavg()
    fp32 = load_model(a.model)
    rows = [measure(fp32, texts, "ig", n, a.k, a.batch_size) for n in a.steps]
    rows.append(measure(fp32, texts, "occlusion", 0, a.k, a.batch_size))
    rows.append(measure(load_model(a.model, variant="onnx-int8", threads=a.threads), texts, "occlusion", 0, a.k, a.batch_size))
    meta = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": str(a.model), "texts": len(texts),
            "threads": a.threads, "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()], "machine": machine_description()}
    print(f"{len(texts)} test texts, k={a.k}, {a.threads} threads; load average {meta['load_average_start']} -> {meta['load_average_end']}")
    print(f"{'method':10} {'variant':10} {'n_steps':>7} {'ms/text':>8} {'top-k drop':>10} {'random drop':>11} {'gap':>7}")
    for r in rows:
        print(f"{r['method']:10} {r['variant']:10} {str(r['n_steps'] or '-'):>7} {r['ms_per_text']:8.1f} "
              f"{r['top_k_drop']:10.3f} {r['random_drop']:11.3f} {r['gap']:7.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        for r in rows: f.write(json.dumps({**meta, **r}) + "\n")


if __name__ == "__main__":
    main()
