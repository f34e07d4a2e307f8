#!/usr/bin/env python3
"""Compares kiln's SmolLM2 (from the GGUF file) with transformers' GGUF loader: token ids and
logits of a few prompts. Not a test (it needs the real model); its numbers go in the README.

    python3 scripts/check_smollm2.py ~/.cache/kiln/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import os, subprocess, sys, tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)",
    "naïve café 🦀 — ok",
]

def main():
    gguf = os.path.expanduser(sys.argv[1])
    out = os.path.join(tempfile.mkdtemp(), "kiln_logits.safetensors")
    subprocess.run(["cargo", "run", "--release", "--example", "lm_logits", "--", gguf, out, *PROMPTS], check=True)
    kiln = load_file(out)
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
    worst = 0.0
    for i, p in enumerate(PROMPTS):
        ids = tok(p, add_special_tokens=False, return_tensors="pt").input_ids
        same_ids = ids[0].tolist() == kiln[f"ids.{i}"].tolist()
        with torch.no_grad():
            ref = model(ids).logits[0]
        err = (ref - kiln[f"logits.{i}"]).abs().max().item()
        top_same = (ref.argmax(-1) == kiln[f"logits.{i}"].argmax(-1)).float().mean().item()
        worst = max(worst, err)
        print(f"prompt {i}: {ids.shape[1]} tokens, ids equal: {same_ids}, max |logit diff| {err:.2e} "
              f"(logit scale {ref.abs().max().item():.1f}), argmax agreement {top_same:.0%}")
    print(f"max abs logit error over all prompts: {worst:.2e}")

if __name__ == "__main__":
    main()
