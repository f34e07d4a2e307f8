#!/usr/bin/env python3
"""Checks that kiln's adapters load in real PEFT by the name they write, with no hand work.

    python3 scripts/check_peft_drop_in.py seqcls RUN_DIR [--base DIR] [--preds PREDS.jsonl]
    python3 scripts/check_peft_drop_in.py causal ADAPTER_DIR [--base-gguf FILE]

seqcls: RUN_DIR is a `kiln train --pooling pooler` run (a SEQ_CLS adapter with BERT's pooler and
the classifier in modules_to_save). The adapter is loaded with
`AutoPeftModelForSequenceClassification.from_pretrained(RUN_DIR/adapter)` exactly as a PEFT user
would: the base is found by the `base_model_name_or_path` kiln wrote (a Hugging Face repo id),
here through a Hugging Face cache layout (models--ORG--NAME/snapshots/...) made in a temporary
folder from the local base (--base, default kiln's cached all-MiniLM-L6-v2), with the hub
offline. It scores the run's test split (RUN_DIR/data/test.jsonl) at the run's max_len and
prints accuracy and macro-F1 beside kiln's (RUN_DIR/report.json); with --preds (the output of
`kiln predict --model RUN_DIR --data RUN_DIR/data/test.jsonl`) it also counts equal labels and
the largest probability difference. Fails when the accuracy differs from kiln's by more than
one example in 400, or a prediction differs.

causal: ADAPTER_DIR is a CAUSAL_LM adapter kiln trained on the SmolLM2 GGUF file. The script
converts the GGUF base (--base-gguf, default kiln's cached SmolLM2-135M-Instruct Q4_1) to a
Hugging Face folder with transformers, places it in a cache layout under the repo id the adapter
names, and loads `AutoPeftModelForCausalLM.from_pretrained(ADAPTER_DIR)` offline, then checks
every LoRA tensor of the file arrived and generates a few tokens.

Needs: torch, transformers, peft, safetensors, gguf.
"""
import argparse, json, os, shutil, sys, tempfile

import torch
from safetensors.torch import load_file

SEQCLS_BASE = "~/.cache/kiln/models/minilm/model"
GGUF = "~/.cache/kiln/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"


def hf_cache_with(repo_id, folder, cache):
    """A Hugging Face hub cache in `cache` holding `folder`'s files as `repo_id`'s main revision."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", "0" * 40)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write("0" * 40)
    for name in os.listdir(folder):
        src = os.path.join(os.path.abspath(folder), name)
        if os.path.isfile(src):
            os.symlink(src, os.path.join(snap, name))
    return snap


def offline(cache):
    os.environ["HF_HUB_CACHE"] = cache
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def macro_f1(gold, pred, k):
    f1s = []
    for c in range(k):
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        fp = sum(g != c and p == c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / k


def seqcls(args):
    run = args.path
    adapter = os.path.join(run, "adapter")
    cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
    meta = json.load(open(os.path.join(adapter, "kiln_classifier.json")))
    settings = json.load(open(os.path.join(run, "settings.json")))
    report = json.load(open(os.path.join(run, "report.json")))
    labels, name = meta["labels"], cfg["base_model_name_or_path"]
    assert meta["pooling"] == "pooler", f"{adapter} was trained with {meta['pooling']} pooling, not pooler"
    print(f"adapter {adapter}: base_model_name_or_path {name!r}, modules_to_save {cfg['modules_to_save']}")
    hf_cache_with(name, os.path.expanduser(args.base), args.cache)
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    # Exactly what a PEFT user writes (num_labels: the base config has no head).
    model = AutoPeftModelForSequenceClassification.from_pretrained(adapter, num_labels=len(labels)).eval()
    tok = AutoTokenizer.from_pretrained(model.peft_config["default"].base_model_name_or_path)
    rows = [json.loads(l) for l in open(os.path.join(run, "data", "test.jsonl")) if l.strip()]
    texts, gold = [r["text"] for r in rows], [labels.index(r["label"]) for r in rows]
    probs = []
    with torch.no_grad():
        for i in range(0, len(texts), 16):
            enc = tok(texts[i:i + 16], padding=True, truncation=True, max_length=settings["max_len"],
                      return_tensors="pt")
            probs.append(model(**enc).logits.float().softmax(-1))
    probs = torch.cat(probs)
    pred = probs.argmax(-1).tolist()
    acc = sum(g == p for g, p in zip(gold, pred)) / len(gold)
    f1 = macro_f1(gold, pred, len(labels))
    kiln_acc, kiln_f1 = report["test"]["accuracy"], report["test"]["macro_f1"]
    print(f"PEFT AutoPeftModelForSequenceClassification on {len(gold)} test texts: accuracy {acc:.4f}, "
          f"macro-F1 {f1:.4f}; kiln's report: accuracy {kiln_acc:.4f}, macro-F1 {kiln_f1:.4f}")
    ok = abs(acc - kiln_acc) <= 1.0 / len(gold) + 1e-9
    if args.preds:
        kp = [json.loads(l) for l in open(args.preds) if l.strip()]
        same = sum(p["label"] == labels[q] for p, q in zip(kp, pred))
        diff = max(abs(p["probs"][l] - probs[i, j].item()) for i, p in enumerate(kp) for j, l in enumerate(labels))
        print(f"kiln predict vs PEFT: {same}/{len(kp)} equal labels, largest probability difference {diff:.2e}")
        ok = ok and same == len(kp)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def causal(args):
    adapter = args.path
    cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
    name = cfg["base_model_name_or_path"]
    print(f"adapter {adapter}: base_model_name_or_path {name!r}")
    gguf = os.path.expanduser(args.base_gguf)
    hf_dir = tempfile.mkdtemp()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    # transformers dequantizes the GGUF file into an ordinary Hugging Face folder.
    base = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                dtype=torch.float32)
    # transformers will not save a model it loaded from GGUF; the same weights in a fresh model
    # of the same config save as ordinary safetensors.
    config = base.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(base.state_dict())
    plain.save_pretrained(hf_dir)
    del plain
    AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf)).save_pretrained(hf_dir)
    del base
    hf_cache_with(name, hf_dir, args.cache)
    from peft import AutoPeftModelForCausalLM, get_peft_model_state_dict

    model = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(model)
    missing = sorted(set(saved) - set(loaded))
    differ = [k for k in saved if k in loaded and not torch.equal(saved[k], loaded[k].float())]
    tok = AutoTokenizer.from_pretrained(name)
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    print(f"AutoPeftModelForCausalLM.from_pretrained({adapter!r}) loaded {type(model.base_model.model).__name__} "
          f"from {name!r}: {len(saved)} LoRA tensors in the file, {len(missing)} missing, {len(differ)} differ; "
          f"greedy: {tok.decode(out[0, ids['input_ids'].shape[1]:])!r}")
    shutil.rmtree(hf_dir, ignore_errors=True)
    ok = not missing and not differ
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["seqcls", "causal"])
    ap.add_argument("path")
    ap.add_argument("--base", default=SEQCLS_BASE)
    ap.add_argument("--base-gguf", default=GGUF)
    ap.add_argument("--preds")
    args = ap.parse_args()
    # huggingface_hub reads these when it is first imported: set them before transformers is.
    args.cache = tempfile.mkdtemp()
    offline(args.cache)
    return seqcls(args) if args.kind == "seqcls" else causal(args)


if __name__ == "__main__":
    sys.exit(main())
