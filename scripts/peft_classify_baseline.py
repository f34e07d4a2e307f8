#!/usr/bin/env python3
"""The PyTorch + PEFT side of the README's strategy table: trains what a `kiln train`
classification run trained, on the same texts, with the same settings, and reports the same
numbers (trainable parameters, test macro-F1, hard-ham recall, wall time).

    python3 scripts/peft_classify_baseline.py RUN_DIR [--device cpu|cuda] [--threads N]

RUN_DIR is a kiln run folder: its settings.json gives the model, strategy, pooling, sequence
length, batch size, epochs, learning rate, schedule, LoRA settings and seed, and its data/ holds
the exact train/valid/test texts kiln used. The model is transformers' BertModel with kiln's
head (masked-mean or CLS pooling, dropout, Linear); LoRA through PEFT (`get_peft_model`, the
head in modules_to_save); AdamW, linear schedule with warmup, clipping at max_grad_norm; the
`head` strategy caches the frozen body's pooled vectors first, as kiln does. Prints one JSON
line. Needs torch, transformers, peft, scikit-learn.
"""
import argparse, json, math, os, random, sys, time

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer
from peft import LoraConfig, get_peft_model
from sklearn.metrics import f1_score


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


class Classifier(nn.Module):
    def __init__(self, body, labels, pooling, dropout):
        super().__init__()
        self.bert = body
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(body.config.hidden_size, labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def pooled(self, ids, mask):
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return h[:, 0]
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def head(self, pooled):
        return self.classifier(self.dropout(pooled))

    def forward(self, ids, mask):
        return self.head(self.pooled(ids, mask))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-attention-dropout", action="store_true",
                    help="attention_probs_dropout_prob = 0, as kiln trains (its attention kernel keeps no "
                         "probabilities to drop)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = json.load(open(os.path.join(args.run_dir, "settings.json")))
    t = s["train"]
    torch.manual_seed(t["seed"])
    random.seed(t["seed"])
    dev = torch.device(args.device)
    start = time.time()

    data = {k: read_jsonl(os.path.join(args.run_dir, "data", f"{k}.jsonl")) for k in ["train", "valid", "test"]}
    labels = s["labels"]
    tok = AutoTokenizer.from_pretrained(s["model"])

    def encode(rows):
        enc = tok([r["text"] for r in rows], truncation=True, max_length=s["max_len"], padding=True,
                  return_tensors="pt")
        y = torch.tensor([labels.index(r["label"]) for r in rows])
        return enc["input_ids"], enc["attention_mask"], y

    extra = {"attention_probs_dropout_prob": 0.0} if args.no_attention_dropout else {}
    # The dropout kiln trained with (settings.json has it since --dropout reached classifiers).
    if s.get("dropout"):
        extra["hidden_dropout_prob"] = s["dropout"]["hidden"]
    body = AutoModel.from_pretrained(s["model"], add_pooling_layer=False, dtype=torch.float32, **extra)
    cfg = body.config
    drop = cfg.classifier_dropout if getattr(cfg, "classifier_dropout", None) is not None else cfg.hidden_dropout_prob
    if s.get("dropout"):
        drop = s["dropout"]["classifier"]
    model = Classifier(body, len(labels), s["pooling"], drop)
    strategy = t["strategy"]
    if strategy == "lora":
        lc = s["lora"]
        model = get_peft_model(model, LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc["dropout"],
                                                 target_modules=lc["target_modules"],
                                                 modules_to_save=["classifier"]))
        inner = model.base_model.model
    else:
        inner = model
        layers = cfg.num_hidden_layers
        for name, p in model.named_parameters():
            if strategy == "head":
                p.requires_grad = name.startswith("classifier.")
            elif strategy.startswith("top:"):
                n = int(strategy[4:])
                layer = int(name.split(".")[3]) if name.startswith("bert.encoder.layer.") else -1
                p.requires_grad = name.startswith("classifier.") or layer >= layers - n
            else:
                p.requires_grad = True
    model.to(dev)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    train_ids, train_mask, train_y = encode(data["train"])
    n = len(train_y)
    bs = t["batch_size"]
    steps = t["max_steps"] or t["epochs"] * math.ceil(n / bs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"], betas=(0.9, 0.999), eps=1e-8)
    warmup = math.ceil(t["warmup_ratio"] * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / warmup if k < warmup else max(0.0, 1 - (k - warmup) / max(1, steps - warmup)))
    weights = torch.tensor(t["class_weights"], device=dev) if t.get("class_weights") else None
    loss_fn = nn.CrossEntropyLoss(weight=weights)

    feats = None
    if strategy == "head":
        model.eval()
        with torch.no_grad():
            feats = torch.cat([inner.pooled(train_ids[i:i + bs].to(dev), train_mask[i:i + bs].to(dev))
                               for i in range(0, n, bs)])
    model.train()
    step = 0
    while step < steps:
        order = torch.randperm(n)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            y = train_y[idx].to(dev)
            if feats is not None:
                logits = inner.head(feats[idx])
            else:
                logits = model(train_ids[idx].to(dev), train_mask[idx].to(dev))
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.get("max_grad_norm"):
                torch.nn.utils.clip_grad_norm_(params, t["max_grad_norm"])
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break
    train_s = time.time() - start

    model.eval()
    test_ids, test_mask, test_y = encode(data["test"])
    preds = []
    with torch.no_grad():
        for i in range(0, len(test_y), bs):
            preds.append(model(test_ids[i:i + bs].to(dev), test_mask[i:i + bs].to(dev)).argmax(-1).cpu())
    pred = torch.cat(preds)
    groups = [r.get("group") for r in data["test"]]
    hard = [i for i, g in enumerate(groups) if g == "hard-ham-1"]
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(json.dumps({
        "strategy": strategy, "trainable_parameters": trainable, "steps": steps,
        "macro_f1": f1_score(test_y.numpy(), pred.numpy(), average="macro"),
        "accuracy": (pred == test_y).float().mean().item(),
        "hard_ham_recall": sum(int(pred[i] == test_y[i]) for i in hard) / max(1, len(hard)),
        "hard_ham": len(hard), "wall_seconds": time.time() - start, "train_seconds": train_s,
        "device": device_name, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    sys.exit(main())
