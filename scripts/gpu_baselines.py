#!/usr/bin/env python3
"""PyTorch baselines for the GPU figures in README, run in the same session as kiln's, on
models of the real architectures with random weights (speed and memory do not depend on the
weights, and the device machine cannot download the real ones). Not used by the tests.

    python3 scripts/gpu_baselines.py make-models OUT      # MiniLM classifier + SmolLM2-135M, random
    python3 scripts/gpu_baselines.py bert-latency OUT/minilm-cls texts.jsonl --runs 50
    python3 scripts/gpu_baselines.py lora-train OUT/smollm2 --steps 30 --batch 8 --seq 64
    python3 scripts/gpu_baselines.py steps [--scale small] [--compile]   # kiln bench --step's steps

Each measuring command prints one JSON line. `steps` builds both models in memory with random
weights, exactly as `kiln bench --step smollm2|minilm` does (src/bench/step.rs: same shapes,
LoRA, optimizer, batch and scale), and times one training step of each, eager and, with
--compile, under torch.compile.
"""
import argparse
import json
import os
import statistics
import time

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2,
              hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0)
# SmolLM2-135M(-Instruct)'s config.json.
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
               rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
               bos_token_id=1, eos_token_id=2)


def device():
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_models(out, tokenizer_dir, small):
    import shutil
    import torch
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    bert = dict(MINILM)
    llama = dict(SMOLLM2)
    if small:  # a quick local check of the plumbing
        bert.update(num_hidden_layers=1)
        llama.update(num_hidden_layers=2, vocab_size=30522)
    cls = BertForSequenceClassification(BertConfig(**bert, num_labels=2, id2label={0: "ham", 1: "spam"},
                                                   label2id={"ham": 0, "spam": 1}))
    # kiln pools by mean, not with BERT's pooler: the folder carries no pooler weights.
    cls.bert.pooler = None
    d = os.path.join(out, "minilm-cls")
    cls.save_pretrained(d, safe_serialization=True)
    lm = LlamaForCausalLM(LlamaConfig(**llama))
    d2 = os.path.join(out, "smollm2")
    lm.save_pretrained(d2, safe_serialization=True)
    for d in (os.path.join(out, "minilm-cls"), d2):
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            src = os.path.join(tokenizer_dir, f)
            if os.path.exists(src):
                shutil.copy(src, d)
    print(json.dumps({"made": [os.path.join(out, "minilm-cls"), d2]}))


def percentile(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def bert_latency(model_dir, data, runs, warmup, max_len, batch_sizes):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    dev = device()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir).to(dev).eval()
    texts = [json.loads(l)["text"] for l in open(data) if l.strip()]
    enc = lambda t: {k: v.to(dev) for k, v in tok(t, truncation=True, max_length=max_len, padding=True,
                                                  return_tensors="pt").items()}

    def logits(batch):
        # kiln's head pools the mean of the last hidden states (attention-masked).
        with torch.no_grad():
            h = model.bert(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            return model.classifier((h * m).sum(1) / m.sum(1))

    for i in range(warmup):
        logits(enc([texts[i % len(texts)]]))
    sync()
    single = []
    for i in range(runs):
        batch = enc([texts[i % len(texts)]])
        t = time.perf_counter()
        logits(batch).argmax(-1).tolist()  # the prediction on the host, as kiln's latency includes
        single.append(time.perf_counter() - t)
    through = {}
    for b in batch_sizes:
        batch = enc([texts[i % len(texts)] for i in range(b)])
        logits(batch)
        sync()
        reps = 5
        t = time.perf_counter()
        for _ in range(reps):
            logits(batch).argmax(-1).tolist()
        through[b] = b * reps / (time.perf_counter() - t)
    ms = [s * 1e3 for s in single]
    print(json.dumps({"what": "pytorch bert latency", "device": torch.cuda.get_device_name() if dev == "cuda" else dev,
                      "torch": torch.__version__, "runs": runs, "p50_ms": percentile(ms, 0.5),
                      "p95_ms": percentile(ms, 0.95), "p99_ms": percentile(ms, 0.99),
                      "throughput_per_s": through, "max_len": max_len}))


def lora_train(model_dir, steps, batch, seq, warmup, dtype):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    dev = device()
    torch.manual_seed(0)
    dt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dt).to(dev)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    vocab = model.config.vocab_size
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        ids = torch.randint(3, min(vocab, 30522), (batch, seq), device=dev)
        sync()
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # one readback a step, as kiln's loop
        if step >= warmup:
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    print(json.dumps({"what": f"pytorch+peft lora ({dtype} base)",
                      "device": torch.cuda.get_device_name() if dev == "cuda" else dev,
                      "torch": torch.__version__, "steps": steps, "batch": batch, "seq": seq,
                      "median_step_s": statistics.median(times),
                      "tokens_per_s": batch * seq / statistics.median(times), "peak_gpu_bytes": peak}))


# kiln bench --step's shapes (src/bench/step.rs StepShape::new): layers, batch, seq, vocab.
STEP_SHAPES = {
    ("smollm2", "full"): (30, 8, 64, 49152), ("smollm2", "small"): (2, 1, 32, 8192),
    ("minilm", "full"): (6, 8, 64, 30522), ("minilm", "small"): (2, 4, 64, 30522),
}


def train_steps(scale, steps, warmup, compile_):
    """One training step of each of kiln's step benchmarks, in PyTorch eager (+ torch.compile)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM
    dev = device()
    for name in ("smollm2", "minilm"):
        layers, batch, seq, vocab = STEP_SHAPES[(name, scale)]
        torch.manual_seed(0)
        if name == "smollm2":
            cfg = dict(SMOLLM2, num_hidden_layers=layers, vocab_size=vocab)
            base = LlamaForCausalLM(LlamaConfig(**cfg))
            model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
            model.to(dev).train()

            def loss_of(ids, model=model):
                return model(input_ids=ids, labels=ids).loss
        else:
            cfg = dict(MINILM, num_hidden_layers=layers, vocab_size=vocab)
            body = BertModel(BertConfig(**cfg), add_pooling_layer=False)
            body = get_peft_model(body, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                   target_modules=["query", "key", "value", "dense"]))
            head = torch.nn.Linear(cfg["hidden_size"], 2)
            drop = torch.nn.Dropout(0.1)
            model = torch.nn.ModuleList([body, head]).to(dev).train()

            def loss_of(ids, body=body, head=head, drop=drop):
                # kiln's head: the mean of the last hidden states (no padding here), dropout, linear.
                pooled = body(input_ids=ids).last_hidden_state.mean(1)
                return torch.nn.functional.cross_entropy(head(drop(pooled)), ids[:, 0] % 2)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
        modes = [("eager", loss_of)]
        if compile_:
            modes.append(("compile", torch.compile(loss_of)))
        for mode, fn in modes:
            times = []
            try:
                for step in range(warmup + steps):
                    ids = torch.randint(3, vocab, (batch, seq), device=dev)
                    sync()
                    t = time.perf_counter()
                    loss = fn(ids)
                    loss.backward()
                    gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    loss.item(), gn.item()  # the loss and the norm read back, as kiln's step does
                    if step >= warmup:
                        times.append(time.perf_counter() - t)
            except Exception as e:  # torch.compile is not available everywhere
                print(json.dumps({"what": f"pytorch step {name}", "mode": mode, "error": str(e)[:300]}))
                continue
            med = statistics.median(times)
            print(json.dumps({"what": f"pytorch step {name}", "mode": mode, "scale": scale,
                              "device": torch.cuda.get_device_name() if dev == "cuda" else dev,
                              "torch": torch.__version__, "layers": layers, "batch": batch, "seq": seq,
                              "vocab": vocab, "steps": steps, "median_ms": med * 1e3,
                              "tokens_per_s": batch * seq / med}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-models")
    m.add_argument("out")
    m.add_argument("--tokenizer", required=True, help="a BERT tokenizer folder (MiniLM's)")
    m.add_argument("--small", action="store_true")
    b = sub.add_parser("bert-latency")
    b.add_argument("model")
    b.add_argument("data")
    b.add_argument("--runs", type=int, default=50)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--max-len", type=int, default=64)
    b.add_argument("--batch-sizes", default="1,8,32,64")
    t = sub.add_parser("lora-train")
    t.add_argument("model")
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--seq", type=int, default=64)
    t.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    st = sub.add_parser("steps")
    st.add_argument("--scale", default="full", choices=["full", "small"])
    st.add_argument("--steps", type=int, default=20)
    st.add_argument("--warmup", type=int, default=3)
    st.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    if a.cmd == "make-models":
        make_models(a.out, a.tokenizer, a.small)
    elif a.cmd == "steps":
        train_steps(a.scale, a.steps, a.warmup, a.compile)
    elif a.cmd == "bert-latency":
        bert_latency(a.model, a.data, a.runs, a.warmup, a.max_len, [int(x) for x in a.batch_sizes.split(",")])
    else:
        lora_train(a.model, a.steps, a.batch, a.seq, a.warmup, a.dtype)


if __name__ == "__main__":
    main()
