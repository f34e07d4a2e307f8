#!/usr/bin/env python3
"""Prints the README's ELPV table from the runs of scripts/elpv_runs.sh OUT_DIR and the
PyTorch results beside them (OUT_DIR/<run>.torch.json, written by
`scripts/elpv_torch.py OUT_DIR/<run> WEIGHTS > OUT_DIR/<run>.torch.json`):

    python3 scripts/elpv_table.py OUT_DIR [run ...]
"""

import json
import os
import sys


def kiln_row(run_dir):
    r = json.load(open(os.path.join(run_dir, "report.json")))
    labels = json.load(open(os.path.join(run_dir, "settings.json")))["labels"]
    d = labels.index("defective")

    def split(name):
        m = r[name]
        groups = r["test_group_scores"] if name == "test" else r["valid_groups"]
        per = ", ".join(f"{g} {v['accuracy']:.3f}" for g, v in sorted(groups.items()))
        return m["accuracy"], m["macro_f1"], m["per_class"][d]["recall"], per

    return r["trainable_parameters"], r["train_seconds"], split("valid"), split("test")


def torch_row(path):
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    t = json.load(open(path))

    def split(name):
        m = t[name]
        per = ", ".join(f"{g} {v['accuracy']:.3f}" for g, v in sorted(t[name + "_groups"].items()))
        return m["accuracy"], m["macro_f1"], m["recall_defective"], per

    return t["trainable_parameters"], t["train_seconds"], split("valid"), split("test")


def fmt(who, row):
    params, secs, v, te = row
    return (f"| {who} | {params:,} | {v[0]:.3f} / {v[1]:.3f} | {te[0]:.3f} / {te[1]:.3f} | {te[2]:.3f} | "
            f"{te[3]} | {secs:.0f} |")


def main():
    out = sys.argv[1]
    runs = sys.argv[2:] or ["head", "top1", "top3", "full", "head_random"]
    print("| run | trainable | valid acc / macro-F1 | test acc / macro-F1 | test defective recall | "
          "test acc by cell type | train s |")
    print("| --- | ---: | --- | --- | ---: | --- | ---: |")
    for run in runs:
        d = os.path.join(out, run)
        if not os.path.exists(os.path.join(d, "report.json")):
            continue
        print(fmt(f"{run} kiln", kiln_row(d)))
        t = torch_row(os.path.join(out, run + ".torch.json"))
        if t:
            print(fmt(f"{run} PyTorch", t))


if __name__ == "__main__":
    main()
