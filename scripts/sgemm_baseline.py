#!/usr/bin/env python3
"""CPU (numpy) or CUDA (PyTorch, TF32 off) SGEMM at the sizes `kiln bench` uses, to print
beside kiln's figures in the same run. Not used by the tests.

    python3 scripts/sgemm_baseline.py                 # numpy on this CPU
    python3 scripts/sgemm_baseline.py --torch-cuda    # cuBLAS SGEMM, TF32 disabled
    python3 scripts/sgemm_baseline.py --sizes 512,1024,2048 --json
"""
import argparse
import json
import statistics
import time


def time_numpy(n, reps):
    import numpy as np

    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_torch_cuda(n, reps):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    a = torch.rand(n, n, device="cuda")
    b = torch.rand(n, n, device="cuda")
    a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512,1024,2048")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--torch-cuda", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    which = "torch-cuda-sgemm-tf32-off" if args.torch_cuda else "numpy-cpu-sgemm"
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        secs = (time_torch_cuda if args.torch_cuda else time_numpy)(n, args.reps)
        rows.append({"baseline": which, "shape": f"{n}x{n}x{n}", "median_ms": secs * 1e3, "gflops": 2 * n**3 / secs / 1e9})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['baseline']:<28} {r['shape']:<16} {r['median_ms']:10.3f} ms {r['gflops']:9.1f} GFLOP/s")


if __name__ == "__main__":
    main()
