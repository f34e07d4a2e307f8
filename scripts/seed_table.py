#!/usr/bin/env python3
"""Prints the README's "Over seeds" table from what scripts/seed_study.sh wrote: for each
strategy, the number of seeds and the mean ± sample standard deviation of test macro-F1 and
hard-ham recall, kiln (OUT_DIR/<strategy>-s<seed>/report.json) beside PyTorch + PEFT
(OUT_DIR/<strategy>-s<seed>.torch.json). A seed counts only where both sides finished. Then
every run's numbers, and the seed-0 `head` run on the task's own split (OUT_DIR/split-run)
beside the same run read back with --data (OUT_DIR/head-s0), which should agree.

    python3 scripts/seed_table.py OUT_DIR
"""

import glob
import json
import os
import re
import statistics
import sys

STRATEGIES = ["head", "top2", "lora", "full"]
HARD = "hard-ham-1"


def kiln_scores(run_dir):
    r = json.load(open(os.path.join(run_dir, "report.json")))
    hard = r["test_groups"][HARD]
    return r["test"]["macro_f1"], hard["correct"] / hard["total"], hard["total"]


def torch_scores(path):
    t = json.load(open(path))
    return t["macro_f1"], t["hard_ham_recall"], t["hard_ham"]


def runs(out, strategy):
    """(seed, kiln scores, torch scores) of every seed both sides finished."""
    found = []
    for d in glob.glob(os.path.join(out, f"{strategy}-s*")):
        m = re.fullmatch(rf"{strategy}-s(\d+)", os.path.basename(d))
        torch_json = d + ".torch.json"
        if not m or not os.path.isfile(os.path.join(d, "report.json")):
            continue
        if not os.path.isfile(torch_json) or os.path.getsize(torch_json) == 0:
            continue
        found.append((int(m.group(1)), kiln_scores(d), torch_scores(torch_json)))
    return sorted(found)


def mean_sd(xs, digits):
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def main():
    out = sys.argv[1]
    rows = {s: runs(out, s) for s in STRATEGIES}
    print("| strategy | seeds | kiln macro-F1 | PyTorch + PEFT macro-F1 | kiln hard-ham recall | "
          "PyTorch + PEFT hard-ham recall |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s, found in rows.items():
        if not found:
            continue
        hard = found[0][1][2]
        kiln_hard, torch_hard = [k[1] for _, k, _ in found], [t[1] for _, _, t in found]
        cells = [mean_sd([k[0] for _, k, _ in found], 3), mean_sd([t[0] for _, _, t in found], 3),
                 f"{mean_sd(kiln_hard, 2)} ({statistics.mean(kiln_hard) * hard:.1f}/{hard})",
                 f"{mean_sd(torch_hard, 2)} ({statistics.mean(torch_hard) * hard:.1f}/{hard})"]
        name = "top:2" if s == "top2" else s
        print(f"| `{name}` | {len(found)} | " + " | ".join(cells) + " |")
    print("\nEach run (macro-F1, hard ham right):")
    for s, found in rows.items():
        for seed, k, t in found:
            print(f"  {s:>4} seed {seed}: kiln {k[0]:.4f} {round(k[1] * k[2])}/{k[2]}   "
                  f"PyTorch + PEFT {t[0]:.4f} {round(t[1] * t[2])}/{t[2]}")
    task, data = os.path.join(out, "split-run"), os.path.join(out, "head-s0")
    if all(os.path.isfile(os.path.join(d, "report.json")) for d in [task, data]):
        a, b = kiln_scores(task), kiln_scores(data)
        print(f"\nhead seed 0 on --task spamassassin: macro-F1 {a[0]:.4f}, hard ham {a[1]:.4f}; "
              f"read back with --data: {b[0]:.4f}, {b[1]:.4f} ({'same' if a == b else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
