#!/usr/bin/env python3
"""Converts a PyTorch checkpoint (.pth/.pt/.bin: the zip format or the older pickle-only one,
such as efficientnet-lite0-57934424.pth) to safetensors, which kiln reads.

    python3 scripts/pth_to_safetensors.py IN.pth OUT.safetensors

kiln keeps this script instead of a Rust pickle reader: the older format is a pickle program
with persistent storage ids and a stream of raw storages after it, and torch's own loader
(with weights_only=True, so the file cannot run code) reads every variant of it. Tensors are
written as f32 (f16/bf16 widened, integer buffers such as `num_batches_tracked` kept as they
are); a `state_dict` or `model` wrapper key is unwrapped.
"""

import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    obj = torch.load(src, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        print(f"{src}: holds a {type(obj).__name__}, not a state dict", file=sys.stderr)
        return 1
    out = {}
    for name, t in obj.items():
        if not torch.is_tensor(t):
            print(f"{src}: `{name}` is a {type(t).__name__}, not a tensor; skipped", file=sys.stderr)
            continue
        if t.is_floating_point():
            t = t.to(torch.float32)
        out[name] = t.contiguous()
    save_file(out, dst)
    print(f"{dst}: {len(out)} tensors, {sum(t.numel() for t in out.values() if t.is_floating_point()):,} floating-point values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
