#!/usr/bin/env python3
"""Checks that real PEFT reads an adapter saved by kiln and gives kiln's logits.

    python3 scripts/check_peft_roundtrip.py ADAPTER_DIR BASE_DIR KILN_LOGITS
    python3 scripts/check_peft_roundtrip.py --fixtures [NAME ...] [--dora]

ADAPTER_DIR  adapter folder written by kiln (adapter_config.json + adapter_model.safetensors)
BASE_DIR     a fixture folder, e.g. tests/fixtures/gpt2_tiny (config.json, model.safetensors,
             expected.safetensors with int32 `input_ids` / `attention_mask`)
KILN_LOGITS  safetensors file with a float32 tensor `logits` [B, T, V] that kiln computed for
             those inputs with the adapter applied

Loads the base model with transformers, the adapter with `peft.PeftModel.from_pretrained`, runs
the fixture inputs and compares logits at the positions where attention_mask == 1 (padded
positions are not compared). Fails (exit 1) on: any PEFT warning about missing/unexpected keys,
adapter keys that do not match the modules PEFT created (either way), shape mismatches, loaded
values that differ from the file, or a max abs logit error above 1e-4.

With --fixtures it does this for each named fixture (default: every decoder family,
gpt2_tiny llama_tiny llama3_tiny qwen2_tiny qwen3_tiny mistral_tiny phi3_tiny gemma3_tiny): runs
`cargo run --release --example lora_roundtrip -- tests/fixtures/NAME TMP/NAME` (a few training
steps of LoRA on every linear layer, saved in PEFT's format under the family's module names,
Phi-3's fused qkv_proj / gate_up_proj included) and checks the result as above. With --dora the
adapters are DoRA (`use_dora: true`, trained `lora_magnitude_vector`s).

Needs: torch, transformers, peft, safetensors.
"""

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import warnings

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import PeftModel, get_peft_model_state_dict

TOL = 1e-4


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


FAMILIES = ["gpt2_tiny", "llama_tiny", "llama3_tiny", "qwen2_tiny", "qwen3_tiny", "mistral_tiny", "phi3_tiny",
            "gemma3_tiny"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", help="ADAPTER_DIR BASE_DIR KILN_LOGITS")
    ap.add_argument("--fixtures", nargs="*", help="fixtures to train on with kiln and check (default: all)")
    ap.add_argument("--dora", action="store_true", help="train DoRA adapters instead of plain LoRA")
    args = ap.parse_args()
    if args.fixtures is None:
        if len(args.paths) != 3:
            ap.error("give ADAPTER_DIR BASE_DIR KILN_LOGITS, or --fixtures")
        return check(*args.paths)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    failed = []
    for name in args.fixtures or FAMILIES:
        base = os.path.join(repo, "tests", "fixtures", name)
        out = tempfile.mkdtemp(prefix=f"kiln_peft_{name}_")
        cmd = ["cargo", "run", "--release", "--quiet", "--example", "lora_roundtrip", "--", base, out]
        if args.dora:
            cmd.append("--dora")
        print(f"\n== {name}\n$ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, cwd=repo, check=True, stderr=subprocess.DEVNULL)
        if check(os.path.join(out, "adapter"), base, os.path.join(out, "kiln_logits.safetensors")) != 0:
            failed.append(name)
    print(f"\n{len(args.fixtures or FAMILIES) - len(failed)} OK, failed: {failed or 'none'}")
    return 1 if failed else 0


def check(adapter_dir, base_dir, kiln_logits_path):
    problems = []

    exp = load_file(f"{base_dir}/expected.safetensors")
    input_ids = exp["input_ids"].long()
    attention_mask = exp["attention_mask"].long()

    kiln = load_file(kiln_logits_path)
    if "logits" not in kiln:
        print(f"FAIL: {kiln_logits_path} has no tensor 'logits' (has {sorted(kiln)})")
        return 1
    kiln_logits = kiln["logits"]
    if kiln_logits.dtype != torch.float32:
        problems.append(f"kiln logits dtype is {kiln_logits.dtype}, expected float32")
        kiln_logits = kiln_logits.float()

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()

    handler = _Collect()
    peft_logger = logging.getLogger("peft")
    peft_logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
    peft_logger.removeHandler(handler)
    msgs = [str(w.message) for w in caught] + handler.records
    for m in msgs:
        print(f"PEFT warning: {m}")
        low = m.lower()
        if "missing" in low or "unexpected" in low or "adapter keys" in low:
            problems.append(f"PEFT warned about keys: {m}")

    # PEFT silently drops unexpected keys, so check the key sets ourselves too.
    saved = load_file(f"{adapter_dir}/adapter_model.safetensors")
    loaded = get_peft_model_state_dict(model, save_embedding_layers=False)
    missing = sorted(set(loaded) - set(saved))
    unexpected = sorted(set(saved) - set(loaded))
    if missing:
        problems.append(f"{len(missing)} keys PEFT expects are missing from the file, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys in the file are not in PEFT's saved-key format (module path with base_model.model. prefix, no adapter name) or match no module, e.g. {unexpected[:3]}")
    for k in sorted(set(saved) & set(loaded)):
        a, b = saved[k], loaded[k]
        if tuple(a.shape) != tuple(b.shape):
            problems.append(f"{k}: file shape {tuple(a.shape)} vs PEFT shape {tuple(b.shape)}")
        elif not torch.equal(a.to(b.dtype), b):
            problems.append(f"{k}: value loaded by PEFT differs from the file")
    print(f"adapter keys: {len(saved)} in file, {len(loaded)} expected by PEFT")

    with torch.no_grad():
        ref = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    if tuple(ref.shape) != tuple(kiln_logits.shape):
        problems.append(f"logits shape: PEFT {tuple(ref.shape)} vs kiln {tuple(kiln_logits.shape)}")
    else:
        valid = attention_mask.bool()
        err = (ref[valid] - kiln_logits[valid]).abs().max().item()
        err_all = (ref - kiln_logits).abs().max().item()
        print(f"max abs logit error (valid positions): {err:.3e} (tol {TOL:.0e}); "
              f"all positions incl. padding (not checked): {err_all:.3e}")
        if not err <= TOL:  # also catches NaN
            problems.append(f"max abs logit error {err:.3e} > {TOL:.0e}")

    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
