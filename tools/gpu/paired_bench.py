#!/usr/bin/env python3
"""kvstore's kernels and torch.compile's, timed in one process, interleaved round by round.

The separate runs of kvstore-gpu-bench and torch_bench.py each give one median per case, and
their run-to-run spread (about 1-2%) is larger than the difference between the two on the
cases where both stream at the DRAM ceiling. This script takes that spread out of the
comparison: it loads kvstore's own cubin (the one NVRTC built for this GPU, dumped with
KVSTORE_CUDA_DUMP_CUBIN) with CuPy, launches its kernels on PyTorch's tensors and stream, and
alternates them with the torch.compile'd functions of torch_bench.py on the same inputs.

Each round times both sides (order swapped every round), each as the median of REPS
event-timed calls enqueued back to back (torch_bench.py's method). The ratio reported per
case is torch's time over kvstore's, per round; its median and range over the rounds.
Before timing, each kvstore result is compared with PyTorch's bit for bit.

Cases (N = 64 Mi f32, K = 4): reduce, dequantize_accumulate (2-bit), pushpull.

Usage: python3 paired_bench.py --cubin kernels.cubin [--rounds 30] [--reps 20] [--out F.json]
"""
import argparse
import json
import statistics

import cupy
import numpy as np
import torch

from torch_bench import N, K, T, dequantize_accumulate, push_pull, quantize_2bit, reduce4

THREADS = 256  # the default tuning the cubin was built with (module::Tuning)


def ptr(t):
    return np.uint64(t.data_ptr())


def queued_median_ms(fn, reps):
    evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
           for _ in range(reps)]
    torch.cuda.synchronize()
    for start, end in evs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in evs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cubin", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out")
    a = ap.parse_args()

    mod = cupy.RawModule(path=a.cubin)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    torch.manual_seed(0)
    xs = [torch.randn(N, device="cuda") for _ in range(K)]
    spare = [xs[0]] * (8 - K)  # unused input slots repeat x0 and are not read
    args8 = [ptr(x) for x in xs + spare]
    n64, k32 = np.uint64(N), np.uint32(K)

    def launch(name, items, args):
        grid = (items + THREADS - 1) // THREADS
        mod.get_function(name)((grid,), (THREADS,), tuple(args), stream=stream)

    # reduce
    out = torch.empty(N, device="cuda")
    ours_reduce = lambda: launch("reduce8", N // 2, [ptr(out), n64, k32] + args8)
    torch_reduce = torch.compile(reduce4)
    # dequantize-accumulate: ours accumulates in place, torch returns out + decode
    packed, _ = quantize_2bit(torch.randn(N, device="cuda"), torch.randn(N, device="cuda"))
    base = torch.randn(N, device="cuda")
    acc = base.clone()
    ours_deq = lambda: launch("dequantize_2bit", N // 4,
                              [ptr(packed), ptr(acc), n64, np.float32(T), np.uint32(1)])
    torch_deq_fn = torch.compile(dequantize_accumulate)
    torch_deq = lambda: torch_deq_fn(packed, base)
    # pushpull: value and pull output written in one pass
    w, pulled = torch.empty(N, device="cuda"), torch.empty(N, device="cuda")
    ours_pp = lambda: launch("reduce8_pull", N // 2, [ptr(w), ptr(pulled), n64, k32] + args8)
    tw, tpull = torch.empty(N, device="cuda"), torch.empty(N, device="cuda")
    torch_pp_fn = torch.compile(push_pull)
    torch_pp = lambda: torch_pp_fn(tw, tpull, *xs)

    # Bit-for-bit checks (these calls also compile the torch side).
    ok = {}
    ours_reduce()
    ok["reduce"] = torch.equal(out, torch_reduce(*xs)) and torch.equal(out, reduce4(*xs))
    ours_deq()
    ok["dequantize_accumulate"] = torch.equal(acc, torch_deq()) and torch.equal(
        acc, dequantize_accumulate(packed, base))
    ours_pp()
    torch_pp()
    ok["pushpull"] = torch.equal(w, tw) and torch.equal(pulled, tpull) and torch.equal(w, out)

    cases = {
        "reduce": (ours_reduce, lambda: torch_reduce(*xs)),
        "dequantize_accumulate": (ours_deq, torch_deq),
        "pushpull": (ours_pp, torch_pp),
    }
    results = {}
    for case, (ours, theirs) in cases.items():
        for f in (ours, theirs, ours, theirs):  # warm-up
            f()
        rounds = []
        for r in range(a.rounds):
            pair = [("kvstore", ours), ("torch", theirs)]
            if r % 2:
                pair.reverse()
            t = {name: queued_median_ms(f, a.reps) for name, f in pair}
            rounds.append(t)
        ratios = [t["torch"] / t["kvstore"] for t in rounds]
        results[case] = dict(
            bit_exact=ok[case],
            kvstore_ms=statistics.median(t["kvstore"] for t in rounds),
            torch_ms=statistics.median(t["torch"] for t in rounds),
            ratio_median=statistics.median(ratios),
            ratio_min=min(ratios),
            ratio_max=max(ratios),
            rounds_kvstore_faster=sum(x > 1 for x in ratios),
            rounds=len(ratios),
        )
        r = results[case]
        print(f"paired  {case:<22} kvstore {r['kvstore_ms']:.4f} ms  torch.compile "
              f"{r['torch_ms']:.4f} ms  torch/kvstore median {r['ratio_median']:.4f} "
              f"[{r['ratio_min']:.4f}, {r['ratio_max']:.4f}]  kvstore faster in "
              f"{r['rounds_kvstore_faster']}/{r['rounds']} rounds  "
              f"{'bit-exact' if r['bit_exact'] else 'MISMATCH'}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           rounds=a.rounds, reps=a.reps, cases=results), f, indent=1)
    if not all(ok.values()):
        raise SystemExit("a kvstore result differs from PyTorch's")


if __name__ == "__main__":
    main()
