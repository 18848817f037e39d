"""Static int8 (onnxruntime `quantize_static`, activation scales calibrated on training texts) against the
dynamic int8 export that `onnx-int8` serves, on the same model, texts and machine, interleaved.

    .venv/bin/python bench/bench_static_int8.py --model reports/<run-id>/student --processed-dir data/processed
    .venv/bin/python bench/bench_static_int8.py --model reports/<run-id>/model --rounds 3 --calibration-texts 512

Both files start from the same fused fp32 ONNX graph (`onnx_model_path(model, "onnx")`); the static copy is
QDQ (per-channel int8 weights, uint8 activations with scales from --calibration-texts training texts, MinMax),
the format onnxruntime's CPU provider runs (QOperator fails to load there for these graphs). Each round scores
the test texts in length-sorted batches of 32 with each file (texts/s) and --latency-texts single texts of at
most 64 tokens one at a time (p50/p95 ms); accuracy on the test split. Medians over --rounds; one JSON row per
file in bench/results/static_int8.jsonl with the load average at start and end.
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "static_int8.jsonl"


class Calibration:
    "The onnxruntime CalibrationDataReader: padded batches of training texts."
    def __init__(self, batches): self.batches = iter(batches)
    def get_next(self): return next(self.batches, None)
    def rewind(self): pass


def quantize_static_copy(fp32: Path, dst: Path, batches: list[dict]) -> Path:
    "A QDQ static int8 copy of `fp32` calibrated on `batches`."
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    quantize_static(str(fp32), str(dst), Calibration(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=["MatMul", "Attention"],          # as the dynamic export; Gemm's bias after mean pooling has no valid scale
                    extra_options={"MatMulConstBOnly": True})
    return dst


def measure(run, encs, names, pad_id, labels, single_rows) -> dict:
    "Texts/s over every text in batches of 32, accuracy, and single-text latency (ms) of one ONNX runner."
    from sentiment_nb.infer import length_sorted_batches, pad_batch
    batches = length_sorted_batches([len(e.ids) for e in encs], 32)
    logits = np.zeros((len(encs), 2), np.float32)
    t0 = time.perf_counter()
    for rows in batches: logits[rows] = run(pad_batch(encs, rows, names, pad_id))
    seconds = time.perf_counter() - t0
    lat = []
    for i in single_rows:
        t = time.perf_counter(); run(pad_batch(encs, [i], names, pad_id)); lat.append((time.perf_counter() - t) * 1000)
    return {"texts_per_s": len(encs) / seconds, "accuracy": float((logits.argmax(1) == labels).mean()),
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a model folder (a student or a 6-block model)")
    ap.add_argument("--processed-dir", default="data/processed", help="the splits: calibration from train, scoring on test")
    ap.add_argument("--calibration-texts", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-texts", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from sentiment_nb.core import read_json
    from sentiment_nb.data import load_splits
    from sentiment_nb.infer import (load_text_encoder, onnx_model_path, onnx_runner, onnx_session, pad_batch)
    load0 = os.getloadavg()
    model = Path(args.model)
    config = read_json(model / "config.json")
    pad_id = config.get("pad_token_id") or 0
    splits, _ = load_splits(args.processed_dir, ("train", "test"))
    enc = load_text_encoder(model, 128)
    test = splits["test"]
    encs = enc.encode_batch_fast(test["text"].tolist())
    labels = test["label"].to_numpy()                      # class ids, as the model's logits are ordered
    single = [i for i, e in enumerate(encs) if len(e.ids) <= 64][:args.latency_texts]
    fp32 = onnx_model_path(model, "onnx")
    dynamic = onnx_model_path(model, "onnx-int8")
    names = [i.name for i in onnx_session(fp32).get_inputs()]
    calib_texts = splits["train"]["text"].sample(args.calibration_texts, random_state=0).tolist()
    calib_encs = enc.encode_batch_fast(calib_texts)
    calib = [pad_batch(calib_encs, list(range(i, min(i + 32, len(calib_encs)))), names, pad_id) for i in range(0, len(calib_encs), 32)]
    tmp = Path(tempfile.mkdtemp(prefix="static-int8-"))
    t0 = time.perf_counter()
    static = quantize_static_copy(fp32, tmp / "model-static-int8.onnx", calib)
    quantize_seconds = time.perf_counter() - t0
    files = {"onnx-int8 (dynamic)": dynamic, "static int8 (QDQ, calibrated)": static}
    runners = {k: onnx_runner(onnx_session(p, args.threads))[1] for k, p in files.items()}
    rounds = {k: [] for k in files}
    for r in range(args.rounds):
        for k, run in runners.items():
            rounds[k].append(measure(run, encs, names, pad_id, labels, single))
            print(f"round {r + 1} {k}: {rounds[k][-1]['texts_per_s']:.1f} texts/s, p50 {rounds[k][-1]['p50_ms']:.2f} ms", flush=True)
    load1 = os.getloadavg()
    print(f"\nmodel {model} ({config.get('num_hidden_layers')} blocks), {len(encs)} test texts, load {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"{'file':32} {'accuracy %':>10} {'texts/s':>9} {'p50 ms':>7} {'p95 ms':>7} {'MB':>6}")
    base = None
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for k, p in files.items():
        med = {m: statistics.median(x[m] for x in rounds[k]) for m in ("texts_per_s", "p50_ms", "p95_ms", "accuracy")}
        base = base or med["texts_per_s"]
        mb = p.stat().st_size / 1e6
        print(f"{k:32} {100 * med['accuracy']:10.2f} {med['texts_per_s']:9.1f} {med['p50_ms']:7.2f} {med['p95_ms']:7.2f} {mb:6.1f}"
              f"   x{med['texts_per_s'] / base:.2f} of dynamic")
        row = {"bench": "static_int8", "file": k, "model_dir": str(model), "model_layers": config.get("num_hidden_layers"),
               **{m: round(v, 4) for m, v in med.items()}, "rounds_texts_per_s": [round(x["texts_per_s"], 1) for x in rounds[k]],
               "size_mb": round(mb, 1), "ratio_to_dynamic": round(med["texts_per_s"] / base, 3), "n_texts": len(encs),
               "calibration_texts": args.calibration_texts, "quantize_seconds": round(quantize_seconds, 1),
               "threads": args.threads, "loadavg_start": load0, "loadavg_end": load1,
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with open(RESULTS, "a") as f: f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
