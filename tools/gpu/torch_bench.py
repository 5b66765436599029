#!/usr/bin/env python3
"""PyTorch baselines for kvstore's CUDA kernels, eager and torch.compile.

Run it on the same GPU, in the same session, as the kvstore kernel benchmarks
so that the figures can be set side by side. All data is
f32, N = 64 Mi elements, K = 4 inputs; inputs are fresh random tensors drawn on
the device (seed 0 per case), never zeros.

Cases and the bytes counted for GB/s (nominal traffic of a one-pass kernel,
the same for eager and compiled even if eager makes more passes):
  memcpy                 dst.copy_(src), 1 GiB buffer         2 * 1 GiB
  reduce                 ((x0 + x1) + x2) + x3                (K + 1) * N * 4
  quantize_2bit          r += g; code 3 if r >= t (r -= t), 2 if r <= -t
                         (r += t), else 0; 4 codes per byte, element 4b+j at
                         bit shift 6-2j of byte b; t = 0.5    3 * N * 4 + N / 4
  dequantize_accumulate  out + decode(packed), 3 -> +t, 2 -> -t, else 0
                                                              N / 4 + 2 * N * 4
  row_sparse_pull        u = unique(ids) (sorted), table.index_select(0, u);
                         table 8 Mi x 64, ids 1 Mi int64 uniform in [0, 8 Mi)
                                     ids * 8 + len(u) * 8 + 2 * len(u) * 64 * 4
  push_pull              w.copy_(((g0 + g1) + g2) + g3); pull.copy_(w)
                                                    (K + 1) * N * 4 + 2 * N * 4

Each (case, variant) is warmed up 3 calls (compilation happens before that, in
the correctness check), then timed 20 calls, each between its own pair of CUDA
events; the median is reported. GB/s = bytes / median seconds / 1e9. The
compiled variant (default mode) is checked against eager with torch.equal
before timing; mismatches are printed, not fatal. quantize_2bit and
dequantize_accumulate return the new residual / new out instead of writing
their inputs, so every timed call sees the same data; memcpy and push_pull
write in place (idempotent). row_sparse_pull is compiled with dynamic=True; if
compiling raises, the compiled row says "compile failed: <reason>".

Usage: python3 torch_bench.py --out FILE.json [--cases memcpy,reduce,...]
                              [--no-compile]
"""
import argparse
import gc
import json
import statistics

import torch
import torch._dynamo

N = 64 * 2**20
K = 4
T = 0.5
WARMUP, ITERS = 3, 20
DEV = "cuda"


def _randn(*shape):
    return torch.randn(*shape, device=DEV, dtype=torch.float32)


# ---- the functions measured (eager; the same code is passed to torch.compile)

def memcpy(dst, src):
    return dst.copy_(src)


def reduce4(x0, x1, x2, x3):
    return ((x0 + x1) + x2) + x3


def quantize_2bit(g, r):
    r = r + g
    pos = r >= T
    neg = r <= -T
    new_r = torch.where(pos, r - T, torch.where(neg, r + T, r))
    code = pos.to(torch.uint8) * 3 + neg.to(torch.uint8) * 2
    c = code.view(-1, 4)
    packed = (c[:, 0] << 6) | (c[:, 1] << 4) | (c[:, 2] << 2) | c[:, 3]
    return packed, new_r


def dequantize_accumulate(packed, out):
    p = packed
    codes = torch.stack([(p >> 6) & 3, (p >> 4) & 3, (p >> 2) & 3, p & 3], dim=1).view(-1)
    dec = torch.where(codes == 3, T, torch.where(codes == 2, -T, 0.0))
    return out + dec


def row_sparse_pull(table, ids):
    u = torch.unique(ids)  # sorted=True
    return u, table.index_select(0, u)


def push_pull(w, pull, g0, g1, g2, g3):
    w.copy_(((g0 + g1) + g2) + g3)
    pull.copy_(w)
    return w, pull


# ---- case set-up: (fn, args, indices of args written in place, bytes(outputs), dynamic)

def setup_memcpy():
    n = 2**30 // 4
    return memcpy, [_randn(n), _randn(n)], [0], lambda o: 2 * n * 4, False


def setup_reduce():
    return reduce4, [_randn(N) for _ in range(K)], [], lambda o: (K + 1) * N * 4, False


def setup_quantize():
    return quantize_2bit, [_randn(N), _randn(N)], [], lambda o: 3 * N * 4 + N // 4, False


def setup_dequantize():
    packed, _ = quantize_2bit(_randn(N), _randn(N))
    return dequantize_accumulate, [packed, _randn(N)], [], lambda o: N // 4 + 2 * N * 4, False


def setup_row_sparse():
    rows, cols, nids = 8 * 2**20, 64, 2**20
    table = _randn(rows, cols)
    ids = torch.randint(0, rows, (nids,), device=DEV, dtype=torch.int64)
    nbytes = lambda o: nids * 8 + len(o[0]) * 8 + 2 * len(o[0]) * cols * 4
    return row_sparse_pull, [table, ids], [], nbytes, True


def setup_push_pull():
    args = [_randn(N), _randn(N)] + [_randn(N) for _ in range(K)]
    return push_pull, args, [0, 1], lambda o: (K + 1) * N * 4 + 2 * N * 4, False


CASES = {
    "memcpy": setup_memcpy,
    "reduce": setup_reduce,
    "quantize_2bit": setup_quantize,
    "dequantize_accumulate": setup_dequantize,
    "row_sparse_pull": setup_row_sparse,
    "push_pull": setup_push_pull,
}


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def time_ms(fn, args):
    for _ in range(WARMUP):
        fn(*args)
    torch.cuda.synchronize()
    evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
           for _ in range(ITERS)]
    for start, end in evs:
        start.record()
        fn(*args)
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in evs)


def compare(case, ref, got):
    """Return a list of mismatch descriptions (empty when all outputs are equal)."""
    bad = []
    if len(ref) != len(got):
        return [f"{case}: {len(got)} outputs, expected {len(ref)}"]
    for i, (a, b) in enumerate(zip(ref, got)):
        if a.shape != b.shape or a.dtype != b.dtype:
            bad.append(f"{case} output {i}: {tuple(b.shape)} {b.dtype}, "
                       f"expected {tuple(a.shape)} {a.dtype}")
        elif not torch.equal(a, b):
            bad.append(f"{case} output {i}: {int((a != b).sum())} of {a.numel()} elements differ")
    return bad


def record(results, case, variant, ms, nbytes, ok, note):
    gbps = nbytes / (ms / 1e3) / 1e9 if ms is not None else None
    results.append(dict(case=case, variant=variant, ms=ms, gbps=gbps,
                        bytes=nbytes, ok=ok, note=note))
    if ms is not None:
        print(f"torch  {case}  {variant}  {ms:.4f}  {gbps:.1f}"
              + (f"  ({note})" if note else ""), flush=True)
    else:
        print(f"torch  {case}  {variant}  -  -  ({note})", flush=True)


def run_case(case, do_compile, results):
    torch.manual_seed(0)
    fn, args, outs, nbytes_of, dynamic = CASES[case]()

    ref = [t.clone() for t in as_tuple(fn(*args))]  # eager reference
    nbytes = nbytes_of(ref)
    note = f"unique={len(ref[0])}" if case == "row_sparse_pull" else ""
    record(results, case, "eager", time_ms(fn, args), nbytes, True, note)
    if not do_compile:
        return

    try:
        cfn = torch.compile(fn, dynamic=dynamic)
        for i in outs:  # new contents in the written buffers, so a no-op shows
            args[i].normal_()
        got = as_tuple(cfn(*args))  # compiles here
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        record(results, case, "compiled", None, nbytes, False, "compile failed: " + reason(e))
        return
    bad = compare(case, ref, got)
    for line in bad:
        print(f"MISMATCH {line}", flush=True)
    del got, ref
    cnote = "; ".join(([note] if note else []) + bad)
    try:
        ms = time_ms(cfn, args)
    except Exception as e:  # noqa: BLE001
        record(results, case, "compiled", None, nbytes, False, "failed: " + reason(e))
        return
    record(results, case, "compiled", ms, nbytes, not bad, cnote)


def reason(e):
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated subset of: " + ",".join(CASES))
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    a = ap.parse_args()
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s): {','.join(unknown)}")

    print(f"gpu {torch.cuda.get_device_name(0)}  torch {torch.__version__}  "
          f"cuda {torch.version.cuda}", flush=True)
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    if hasattr(torch._dynamo.config, "capture_dynamic_output_shape_ops"):
        torch._dynamo.config.capture_dynamic_output_shape_ops = True  # torch.unique

    results = []
    for case in cases:
        try:
            run_case(case, not a.no_compile, results)
        except Exception as e:  # noqa: BLE001
            record(results, case, "eager", None, 0, False, "failed: " + reason(e))
        gc.collect()
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        with open(a.out, "w") as f:  # rewritten after every case: partial runs keep results
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
