#!/usr/bin/env python3
"""Compares kiln's Gemma 3 270M (the Q4_K_M GGUF) with transformers' GGUF loader (dequantized to
f32, Gemma3ForCausalLM): token ids and logits of four prompts, and the last positions of a prompt
past the 512-token sliding window (so local and global layers differ). Not a test (it needs the
real model); its numbers go in the README.

    python3 scripts/check_gemma3.py ~/.cache/kiln/models/gemma3-270m/gemma-3-270m-q4_k_m.gguf [--quantized]

kiln dequantizes too (`examples/lm_logits`), or with --quantized keeps the Q4_K/Q6_K/Q5_0/Q8_0
blocks on the GPU as `kiln train` does (then the difference includes the kernels' f32 order).

    python3 scripts/check_gemma3.py PATH.gguf --lora RUN/adapter

checks instead that real PEFT loads an adapter kiln trained on the file (`PeftModel.from_pretrained`
on transformers' Gemma3ForCausalLM, no missing or unexpected keys) and gives kiln's logits with it
on the first three prompts.
"""
import os, subprocess, sys, tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "<bos>The capital of France is",
    "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)",
    "<bos>naïve café 🦀 — ok",
]
# About 700 tokens: past the local layers' window of 512.
LONG = "<bos>" + " ".join(f"Item {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7 % 13} stones." for i in range(60))
LAST = 8


def run_kiln(gguf, quantized, last, prompts, lora=None):
    out = os.path.join(tempfile.mkdtemp(), "kiln_logits.safetensors")
    flags = (["--quantized"] if quantized else []) + (["--last", str(last)] if last else [])
    flags += ["--lora", lora] if lora else []
    subprocess.run(["cargo", "run", "--release", "--example", "lm_logits", "--", *flags, gguf, out, *prompts],
                   check=True)
    return load_file(out)


def check_lora(gguf, adapter):
    from peft import PeftModel
    prompts = PROMPTS[:3]
    kiln = run_kiln(gguf, False, None, prompts, lora=adapter)
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter).eval()
    key_warnings = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    assert not key_warnings, key_warnings
    loaded = {k for k, _ in model.named_parameters() if "lora_" in k}
    print(f"PEFT: {len(loaded)} LoRA tensors in the model, adapter {adapter}")
    worst = 0.0
    for i, p in enumerate(prompts):
        ids = tok(p, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = model(ids).logits[0]
        err = (ref - kiln[f"logits.{i}"]).abs().max().item()
        agree = (ref.argmax(-1) == kiln[f"logits.{i}"].argmax(-1)).float().mean().item()
        worst = max(worst, err)
        print(f"prompt {i}: {ids.shape[1]} tokens, max |logit diff| with the adapter {err:.2e}, argmax agreement {agree:.0%}")
    print(f"max abs logit error with the adapter: {worst:.2e}")


def main():
    gguf = os.path.expanduser(sys.argv[1])
    if "--lora" in sys.argv[2:]:
        return check_lora(gguf, sys.argv[sys.argv.index("--lora") + 1])
    quantized = "--quantized" in sys.argv[2:]
    kiln = run_kiln(gguf, quantized, None, PROMPTS)
    kiln_long = run_kiln(gguf, quantized, LAST, [LONG])
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    print(f"transformers: {type(model).__name__}, layer types {model.config.layer_types[:6]}..., "
          f"sliding_window {model.config.sliding_window}, query_pre_attn_scalar {model.config.query_pre_attn_scalar}")
    worst, all_same = 0.0, True
    cases = [(f"prompt {i}", p, kiln[f"ids.{i}"], kiln[f"logits.{i}"], None) for i, p in enumerate(PROMPTS)]
    cases.append(("long prompt (last 8 positions)", LONG, kiln_long["ids.0"], kiln_long["logits.0"], LAST))
    for name, p, ids_k, logits_k, last in cases:
        ids = tok(p, add_special_tokens=False, return_tensors="pt").input_ids
        same_ids = ids[0].tolist() == ids_k.tolist()
        with torch.no_grad():
            ref = model(ids).logits[0]
        if last:
            ref = ref[-last:]
        err = (ref - logits_k).abs().max().item()
        agree = (ref.argmax(-1) == logits_k.argmax(-1)).float().mean().item()
        worst = max(worst, err)
        all_same &= agree == 1.0 and same_ids
        print(f"{name}: {ids.shape[1]} tokens, ids equal: {same_ids}, max |logit diff| {err:.2e} "
              f"(logit scale {ref.abs().max().item():.1f}), argmax agreement {agree:.0%}")
    print(f"max abs logit error over all prompts: {worst:.2e}; same ids and argmax everywhere: {all_same}")


if __name__ == "__main__":
    main()
