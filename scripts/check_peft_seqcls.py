#!/usr/bin/env python3
"""Checks that real PEFT reads a SEQ_CLS adapter saved by `kiln train --strategy lora` (LoRA on
the encoder, the classifier in modules_to_save) and gives kiln's logits.

    python3 scripts/check_peft_seqcls.py ADAPTER_DIR [MODEL_DIR]

MODEL_DIR is the base encoder (default: all-MiniLM-L6-v2 in ~/.cache/kiln). The script runs
`cargo run --example classify_logits` for kiln's logits on a few texts, then loads the base with
`AutoModelForSequenceClassification` and the adapter with `PeftModel.from_pretrained`, and pools
as kiln's `kiln_classifier.json` says (masked mean or [CLS]) before PEFT's trained classifier.
Fails (exit 1) when a key of the file is not one PEFT expects, when a loaded value differs from
the file, when PEFT expects a key the file lacks (other than LoRA on BERT's pooler, which kiln's
pooling never uses and PEFT leaves at B = 0), or when a logit differs by more than 1e-4.

Needs: torch, transformers, peft, safetensors.
"""
import json, os, subprocess, sys, tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification
from peft import PeftModel, get_peft_model_state_dict

TOL = 1e-4
DEFAULT = "~/.cache/kiln/models/minilm/model"
TEXTS = [
    "Subject: meeting moved\n\nHi all, the review is now on Thursday at 10.",
    "Subject: YOU HAVE WON\n\nClaim your FREE prize now!!! Click the link below to unsubscribe.",
    "Subject: Re: kernel patch\n\nThe second hunk does not apply on top of 2.4.19; can you rebase?",
]


def main():
    adapter = sys.argv[1]
    model_dir = os.path.expanduser(sys.argv[2] if len(sys.argv) > 2 else DEFAULT)
    meta = json.load(open(os.path.join(adapter, "kiln_classifier.json")))
    out = os.path.join(tempfile.mkdtemp(), "kiln_logits.safetensors")
    subprocess.run(["cargo", "run", "--release", "--example", "classify_logits", "--", model_dir, out,
                    "--adapter", adapter, *TEXTS], check=True)
    kiln = load_file(out)
    labels = meta["labels"]
    base = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()

    problems = []
    saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(model)
    missing = sorted(k for k in set(loaded) - set(saved) if ".pooler." not in k)
    unexpected = sorted(set(saved) - set(loaded))
    if missing:
        problems.append(f"{len(missing)} keys PEFT expects are missing, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys of the file match nothing in PEFT, e.g. {unexpected[:3]}")
    for k in sorted(set(saved) & set(loaded)):
        if not torch.equal(saved[k], loaded[k].float()):
            problems.append(f"{k}: PEFT's value differs from the file")
    print(f"adapter keys: {len(saved)} in file ({sum('classifier' in k for k in saved)} of the head), "
          f"{len(loaded)} expected by PEFT (pooler LoRA left at B = 0)")

    ids, mask = kiln["input_ids"].long(), kiln["attention_mask"].long()
    inner = model.base_model.model
    with torch.no_grad():
        hidden = inner.bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        if meta["pooling"] == "mean":
            m = mask.unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        else:
            pooled = hidden[:, 0]
        logits = inner.classifier(pooled)
    err = (logits - kiln["logits"]).abs().max().item()
    print(f"PEFT logits {logits.tolist()}")
    print(f"max abs logit error: {err:.2e} (tol {TOL:.0e})")
    if not err <= TOL:
        problems.append(f"logit error {err:.2e}")
    for p in problems:
        print(f"FAIL: {p}")
    print("OK" if not problems else "FAIL")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
