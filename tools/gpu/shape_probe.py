#!/usr/bin/env python3
"""Launch shapes for the K = 4 reduce and pushpull, against torch.compile, in one process.

paired_bench.py found torch.compile's reduce and pushpull 0.4-0.6% faster than kvstore's in
every round, both at about 92% of the DRAM peak (ncu). Triton launches one thread per two
floats (131,072 blocks of 256 threads at N = 64 Mi) with no loop; kvstore one thread per
float4. This probe compiles one-item-per-thread variants with NVRTC through CuPy
(--fmad=false, as kvstore's module does) and times them interleaved with kvstore's own cubin
and torch.compile, each checked bit for bit against PyTorch first.

Usage: python3 shape_probe.py --cubin kernels.cubin [--rounds 12] [--reps 20]
"""
import argparse
import statistics

import cupy
import numpy as np
import torch

from paired_bench import ptr, queued_median_ms
from torch_bench import N, K, push_pull, reduce4

SRC = r"""
typedef unsigned long long u64;
#define IN4 const float* __restrict__ x0, const float* __restrict__ x1, \
            const float* __restrict__ x2, const float* __restrict__ x3
template <typename V> struct S;
template <> struct S<float> {
  static __device__ float add(float a, float b) { return a + b; } };
template <> struct S<float2> {
  static __device__ float2 add(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); } };
template <> struct S<float4> {
  static __device__ float4 add(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w); } };
template <typename V>
__device__ V sum(u64 i, IN4) {
  V a = ((const V*)x0)[i], b = ((const V*)x1)[i], c = ((const V*)x2)[i], d = ((const V*)x3)[i];
  return S<V>::add(S<V>::add(S<V>::add(a, b), c), d);
}
#define KERNELS(V)                                                                          \
  extern "C" __global__ void reduce_##V(float* __restrict__ out, IN4, u64 items) {          \
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;                                     \
    if (i < items) ((V*)out)[i] = sum<V>(i, x0, x1, x2, x3);                                \
  }                                                                                         \
  extern "C" __global__ void pushpull_##V(float* __restrict__ out, float* __restrict__ pull, \
                                          IN4, u64 items) {                                 \
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;                                     \
    if (i < items) { V s = sum<V>(i, x0, x1, x2, x3); ((V*)out)[i] = s; ((V*)pull)[i] = s; } \
  }
KERNELS(float)
KERNELS(float2)
KERNELS(float4)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cubin", required=True)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    ours = cupy.RawModule(path=a.cubin)
    probe = cupy.RawModule(code=SRC, options=("--fmad=false", "-std=c++17"))
    torch.manual_seed(0)
    xs = [torch.randn(N, device="cuda") for _ in range(K)]
    xp = [ptr(x) for x in xs]
    args8 = xp + [xp[0]] * (8 - K)
    out, pull = torch.empty(N, device="cuda"), torch.empty(N, device="cuda")
    tout, tpull = torch.empty(N, device="cuda"), torch.empty(N, device="cuda")
    want = reduce4(*xs)

    def launch(mod, name, items, threads, args):
        grid = (items + threads - 1) // threads
        mod.get_function(name)((grid,), (threads,), tuple(args), stream=stream)

    treduce, tpp = torch.compile(reduce4), torch.compile(push_pull)
    variants = {"reduce": {}, "pushpull": {}}
    variants["reduce"]["torch.compile"] = lambda: treduce(*xs)
    variants["pushpull"]["torch.compile"] = lambda: tpp(tout, tpull, *xs)
    n64, k32 = np.uint64(N), np.uint32(K)
    variants["reduce"]["kvstore reduce8"] = lambda: launch(
        ours, "reduce8", N // 2, 256, [ptr(out), n64, k32] + args8)
    variants["pushpull"]["kvstore reduce8_pull"] = lambda: launch(
        ours, "reduce8_pull", N // 2, 256, [ptr(out), ptr(pull), n64, k32] + args8)
    for vec, width in (("float", 1), ("float2", 2), ("float4", 4)):
        items = np.uint64(N // width)
        for threads in (128, 256, 512):
            variants["reduce"][f"{vec} x {threads}"] = (
                lambda v=vec, t=threads, it=items: launch(
                    probe, f"reduce_{v}", int(it), t, [ptr(out)] + xp + [it]))
            variants["pushpull"][f"{vec} x {threads}"] = (
                lambda v=vec, t=threads, it=items: launch(
                    probe, f"pushpull_{v}", int(it), t, [ptr(out), ptr(pull)] + xp + [it]))
    for case, vs in variants.items():
        exact = {}
        for name, f in vs.items():
            out.zero_()
            pull.zero_()
            f()
            torch.cuda.synchronize()
            if name == "torch.compile":
                exact[name] = torch.equal(tout if case == "pushpull" else treduce(*xs), want)
            else:
                exact[name] = torch.equal(out, want) and (case == "reduce" or torch.equal(pull, want))
            f()
        times = {name: [] for name in vs}
        for r in range(a.rounds):
            order = list(vs.items())
            if r % 2:
                order.reverse()
            for name, f in order:
                times[name].append(queued_median_ms(f, a.reps))
        base = statistics.median(times["torch.compile"])
        for name in vs:
            ms = statistics.median(times[name])
            print(f"shape  {case:<8} {name:<36} {ms:.4f} ms  torch/this {base / ms:.4f}  "
                  f"{'bit-exact' if exact[name] else 'MISMATCH'}", flush=True)


if __name__ == "__main__":
    main()
