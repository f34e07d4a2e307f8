#!/usr/bin/env python3
"""Token ids of awkward strings from transformers' GGUF loader, for the real Gemma 3 270M file.

    python3 scripts/check_gemma3_tokenizer.py ~/.cache/kiln/models/gemma3-270m/gemma-3-270m-q4_k_m.gguf OUT.json

Writes {"strings": [...], "ids": [[...], ...]} with add_special_tokens=True (so <bos> first, as
the file asks). `cargo run --release --example gguf_tokens -- FILE OUT.json` compares kiln's ids
with them. Needs transformers 5.x and gguf.
"""
import json
import os
import sys

from transformers import AutoTokenizer

STRINGS = [
    "The capital of France is",
    "  two leading spaces and trailing  ",
    "naïve café, déjà vu — Zürich",
    "emoji 🤖🔥 and 👩‍👩‍👧",
    "def f(x):\n    return x ** 2  # comment\n\n\n",
    "12345678901234567890 3.14159 1e-5",
    "don't won't they're I'm",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "日本語のテキスト、中文文本。한국어",
    "tab\there\r\nwindows line",
    "\u0007\u001b control \ufeff bom",
    "ⱥ rare letters ꝏ ᚠᛇᚻ",
    "",
    " ",
]


def main():
    path, out = os.path.expanduser(sys.argv[1]), sys.argv[2]
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    ids = [tok(s, add_special_tokens=True)["input_ids"] for s in STRINGS]
    with open(out, "w") as f:
        json.dump({"strings": STRINGS, "ids": ids}, f, ensure_ascii=False)
    for s, i in zip(STRINGS, ids):
        print(repr(s)[:40], i[:12])


if __name__ == "__main__":
    main()
