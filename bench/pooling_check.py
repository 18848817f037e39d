"""Run: .venv/bin/python bench/pooling_check.py cls|mean SEED [LR] [EPOCHS] [SPLITS_DIR]  (default data/processed)
Quick lever check on validation only: [CLS]+pooler head (BertForSequenceClassification) vs masked mean pooling,
1 epoch over all 10,200 training rows, lr 1e-4, warmup 0.1 linear, batch 32, wd 0.01, length-grouped dynamic padding."""
import sys, time, json, math, random
import numpy as np, pandas as pd, torch
from torch import nn
from transformers import AutoTokenizer, AutoModel, AutoModelForSequenceClassification, get_linear_schedule_with_warmup
from sentiment_nb.core import embedded_model_path
torch.set_num_threads(2)
head, seed = sys.argv[1], int(sys.argv[2])
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
epochs = float(sys.argv[4]) if len(sys.argv) > 4 else 1
random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
P = sys.argv[5] if len(sys.argv) > 5 else "data/processed"
tr, va = pd.read_parquet(f"{P}/train.parquet"), pd.read_parquet(f"{P}/validation.parquet")
path = str(embedded_model_path()); tok = AutoTokenizer.from_pretrained(path)
class Mean(nn.Module):
    def __init__(s):
        super().__init__(); s.enc = AutoModel.from_pretrained(path, add_pooling_layer=False); s.drop = nn.Dropout(0.1); s.out = nn.Linear(384, 2)
    def forward(s, input_ids, attention_mask, **kw):
        h = s.enc(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).float(); return s.out(s.drop((h * m).sum(1) / m.sum(1).clamp(min=1)))
if head == "mean": model = Mean()
else:
    m = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = lambda **kw: m(**kw).logits; model_params = m
mod = model if head == "mean" else m
def batches(df, bs, shuffle):
    idx = np.arange(len(df))
    if shuffle:
        np.random.shuffle(idx); lens = df.text.str.len().values
        mega = [idx[i:i+bs*50] for i in range(0, len(idx), bs*50)]
        idx = np.concatenate([g[np.argsort(-lens[g])] for g in mega])
        chunks = [idx[i:i+bs] for i in range(0, len(idx), bs)]; random.shuffle(chunks)
    else: chunks = [idx[i:i+bs] for i in range(0, len(idx), bs)]
    for c in chunks:
        enc = tok(list(df.text.values[c]), truncation=True, max_length=128, padding=True, return_tensors="pt")
        yield enc, torch.tensor(df.label.values[c])
steps = math.ceil(len(tr) / 32) * math.ceil(epochs)
nd = ["bias", "LayerNorm.weight"]
groups = [{"params": [p for n, p in mod.named_parameters() if not any(x in n for x in nd)], "weight_decay": 0.01},
          {"params": [p for n, p in mod.named_parameters() if any(x in n for x in nd)], "weight_decay": 0.0}]
opt = torch.optim.AdamW(groups, lr=lr); sch = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
t0 = time.time(); res = []
for ep in range(math.ceil(epochs)):
    mod.train()
    for enc, y in batches(tr, 32, True):
        loss = nn.functional.cross_entropy(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]), y)
        loss.backward(); torch.nn.utils.clip_grad_norm_(mod.parameters(), 1.0); opt.step(); sch.step(); opt.zero_grad()
    mod.eval(); correct = 0
    with torch.no_grad():
        for enc, y in batches(va, 128, False):
            correct += (model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).argmax(-1) == y).sum().item()
    res.append(correct / len(va))
print(json.dumps({"head": head, "seed": seed, "lr": lr, "epochs": epochs, "val_acc": res, "seconds": round(time.time() - t0)}), flush=True)
