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

    --kiln-order   draws the head's initial weights and the data order as kiln does (SplitMix64
                   from the run's seed), so only the arithmetic and the dropout masks differ; the
                   JSON then also has each step's loss and gradient norm next to the run's own
                   (metrics.jsonl). With a run trained with --dropout 0 and
                   --no-attention-dropout here, nothing random is left and the two agree step by
                   step to float rounding.
"""
import argparse, json, math, os, random, sys, time

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer
from peft import LoraConfig, get_peft_model
from sklearn.metrics import f1_score


MASK64 = (1 << 64) - 1


class SplitMix64:
    """kiln's generator (src/util/rng.rs): shuffles and, with Box-Muller, the head's init."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n):
        return (self.next_u64() * n) >> 64

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]

    def next_f64(self):
        return (self.next_u64() >> 11) / float(1 << 53)

    def normal(self, n, std):
        out = []
        for _ in range(n):
            u1 = max(self.next_f64(), 1e-300)
            u2 = self.next_f64()
            out.append(math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2) * std)
        return out


def kiln_head_init(classifier, seed):
    """src/models/classifier.rs's fresh_head: N(0, 0.02) from Rng(seed ^ 0xC1A551F1), bias 0."""
    k, c = classifier.weight.shape
    w = SplitMix64(seed ^ 0xC1A551F1).normal(k * c, 0.02)
    classifier.weight.data = torch.tensor(w, dtype=torch.float32).reshape(k, c)
    classifier.bias.data.zero_()


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
    ap.add_argument("--kiln-order", action="store_true",
                    help="kiln's head initialisation and data order (see above)")
    ap.add_argument("--seed", type=int, default=None,
                    help="another seed than the run's (for a study of the seed alone; the "
                         "step-by-step comparison with the run then means nothing)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = json.load(open(os.path.join(args.run_dir, "settings.json")))
    t = s["train"]
    if args.seed is not None:
        t["seed"] = args.seed
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
    kiln_dropout = s.get("dropout")
    if kiln_dropout:
        extra["hidden_dropout_prob"] = kiln_dropout["hidden"]
    body = AutoModel.from_pretrained(s["model"], add_pooling_layer=False, dtype=torch.float32, **extra)
    cfg = body.config
    if kiln_dropout:
        drop = kiln_dropout["classifier"]
    elif getattr(cfg, "classifier_dropout", None) is not None:
        drop = cfg.classifier_dropout
    else:
        drop = cfg.hidden_dropout_prob
    model = Classifier(body, len(labels), s["pooling"], drop)
    if args.kiln_order:
        kiln_head_init(model.classifier, t["seed"])
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
    step, epoch, trace = 0, 0, []
    while step < steps:
        if args.kiln_order:
            kiln_order = list(range(n))
            SplitMix64(t["seed"] + epoch).shuffle(kiln_order)
            order = torch.tensor(kiln_order)
        else:
            order = torch.randperm(n)
        epoch += 1
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
            norm = None
            if t.get("max_grad_norm"):
                norm = torch.nn.utils.clip_grad_norm_(params, t["max_grad_norm"])
            if args.kiln_order:
                # Only the comparison with kiln's metrics.jsonl pays for these readbacks.
                if norm is None:
                    norm = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
                trace.append((loss.item(), norm.item()))
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
    steps_vs_kiln = None
    if args.kiln_order and args.seed is None:
        events = [json.loads(l) for l in open(os.path.join(args.run_dir, "metrics.jsonl")) if l.strip()]
        kiln_steps = [(e["loss"], e["grad_norm"]) for e in events if e.get("event") == "step"]
        pairs = list(zip(trace, kiln_steps))
        steps_vs_kiln = {
            "steps": len(pairs),
            "max_abs_loss_diff": max(abs(a[0] - b[0]) for a, b in pairs),
            "max_rel_grad_norm_diff": max(abs(a[1] - b[1]) / max(abs(b[1]), 1e-12) for a, b in pairs),
            "torch": trace, "kiln": kiln_steps,
        }
    print(json.dumps({
        "strategy": strategy, "seed": t["seed"], "kiln_draws": args.kiln_order, "trainable_parameters": trainable, "steps": steps,
        "macro_f1": f1_score(test_y.numpy(), pred.numpy(), average="macro"),
        "accuracy": (pred == test_y).float().mean().item(),
        "hard_ham_recall": sum(int(pred[i] == test_y[i]) for i in hard) / max(1, len(hard)),
        "hard_ham": len(hard), "wall_seconds": time.time() - start, "train_seconds": train_s,
        "device": device_name, "torch": torch.__version__,
        **({"kiln_order": steps_vs_kiln} if steps_vs_kiln else {}),
    }))


if __name__ == "__main__":
    sys.exit(main())
