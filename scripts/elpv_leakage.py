#!/usr/bin/env python3
"""Near-duplicate leakage of an ELPV split, by a 64-bit difference hash (dHash: the image
resized to 9x8 grayscale, one bit per horizontally adjacent pair): pairs of cells on two
sides of the split whose hashes differ in at most D bits, for kiln's module-block split (a kiln
run's data/*.jsonl) against a random stratified split of the same sizes.

    python3 scripts/elpv_leakage.py RUN_DIR [--max-bits D]
"""

import argparse
import json
import os
import random

import numpy as np
from PIL import Image


def dhash(path):
    a = np.asarray(Image.open(path).convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def cross_pairs(hashes, side, d):
    h = np.array(hashes, dtype=np.uint64)
    side = np.array(side)
    count = 0
    for i in range(len(h)):
        x = np.bitwise_xor(h[i + 1:], h[i])
        dist = np.array([bin(int(v)).count("1") for v in x])
        count += int(((dist <= d) & (side[i + 1:] != side[i])).sum())
    return count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--max-bits", type=int, default=4)
    args = ap.parse_args()
    rows, side = [], []
    for k, name in enumerate(["train", "valid", "test"]):
        for line in open(os.path.join(args.run, "data", f"{name}.jsonl")):
            if line.strip():
                rows.append(json.loads(line))
                side.append(k)
    hashes = [dhash(r["text"]) for r in rows]
    blocks = cross_pairs(hashes, side, args.max_bits)
    rng = random.Random(0)
    shuffled = side[:]
    rng.shuffle(shuffled)
    rand = cross_pairs(hashes, shuffled, args.max_bits)
    print(json.dumps({"cells": len(rows), "max_bits": args.max_bits,
                      "cross_split_pairs_module_blocks": blocks, "cross_split_pairs_random": rand}))


if __name__ == "__main__":
    main()
