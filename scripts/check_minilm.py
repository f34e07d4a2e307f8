#!/usr/bin/env python3
"""Compares kiln's all-MiniLM-L6-v2 sentence embeddings (masked mean pooling of the last hidden
states) with sentence-transformers' on a few sentences. Not a test (it needs the real model); its
numbers go in the README.

    python3 scripts/check_minilm.py [MODEL_DIR]

MODEL_DIR defaults to the folder `kiln train` fetches into ~/.cache/kiln. Needs torch,
sentence-transformers, safetensors.
"""
import os, subprocess, sys, tempfile

import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "FREE!!! Click here to claim your $1,000,000 prize now",
    "Hi Bob, the meeting moved to 3pm; see the attached agenda.",
    "naïve café, déjà vu — unicode and accents",
    "a",
]
DEFAULT = "~/.cache/kiln/models/minilm/model"


def main():
    model_dir = os.path.expanduser(sys.argv[1] if len(sys.argv) > 1 else DEFAULT)
    out = os.path.join(tempfile.mkdtemp(), "kiln_minilm.safetensors")
    subprocess.run(["cargo", "run", "--release", "--example", "classify_logits", "--", model_dir, out, *SENTENCES],
                   check=True)
    kiln = load_file(out)
    st = SentenceTransformer(model_dir, device="cpu")
    st.max_seq_length = 128
    # Transformer + Pooling only: the Normalize module after them is compared separately.
    with torch.no_grad():
        feats = st.tokenize(SENTENCES)
        ids_equal = all(
            feats["input_ids"][i][feats["attention_mask"][i].bool()].tolist()
            == kiln["input_ids"][i][kiln["attention_mask"][i].bool()].long().tolist()
            for i in range(len(SENTENCES)))
        pooled = st[1](st[0](feats))["sentence_embedding"]
        normalized = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=False)
    ours = kiln["pooled"]
    err = (pooled - ours).abs().max().item()
    err_norm = (normalized - torch.nn.functional.normalize(ours, dim=-1)).abs().max().item()
    print(f"token ids equal: {ids_equal}")
    print(f"mean-pooled embeddings: max abs error {err:.2e} (values up to {pooled.abs().max().item():.2f})")
    print(f"normalized (sentence-transformers' output): max abs error {err_norm:.2e}")
    ok = ids_equal and err < 1e-4 and err_norm < 1e-4
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
