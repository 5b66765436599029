#!/usr/bin/env python3
"""The cases of `kvstore bench`, run on MXNet 1.9.1, for the "x MXNet" column.

Prints one JSON object on stdout: {"a": {"median_s": ..., "min_s": ..., "iters": ...}, ...,
"mxnet_version": "1.9.1"}. Sizes and semantics follow crates/kvstore-cli/src/bench.rs (see
docs/performance.md):

  a  dense push + pull of one key, 4 devices x 4 Mi float32
  b  a with 2-bit gradient compression, threshold 0.5
  c  row_sparse_pull of 16 Ki random ids (with duplicates) from a 256 Ki x 64 table
  d  row_sparse push from 4 devices, 16 Ki distinct random rows each, into that table
  e  10 000 one-element keys pushed and pulled as lists

MXNet's row_sparse_pull needs a row_sparse stored value, so the table of c is stored as a
row_sparse array holding every row (the Rust store is given the dense table).

Usage: .venv/bin/python tools/mxnet_bench.py [--cases a,b,c,d,e] [--iters N] [--scale S]
"""

import argparse
import json
import os
import statistics
import sys
import time

# MXNet's defaults: the threaded engine, OpenMP sized by MXNet itself.
os.environ.pop("MXNET_ENGINE_TYPE", None)
os.environ.pop("OMP_NUM_THREADS", None)

import numpy as np  # noqa: E402
import mxnet as mx  # noqa: E402

DEVICES = 4
DENSE_LEN = 4 * 1024 * 1024
TABLE_ROWS = 256 * 1024
ROW_LEN = 64
SPARSE_IDS = 16 * 1024
SMALL_KEYS = 10_000
DEFAULT_ITERS = {"a": 20, "b": 20, "c": 50, "d": 50, "e": 10}
WARMUP = 3
SEED = 42


def scaled(base, scale):
    """The same rounding as bench.rs: truncate, at least 1."""
    return max(1, int(base * scale))


def timed(step, iters):
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "iters": iters}


def dense_case(n, iters, compression):
    kv = mx.kv.create("device")
    if compression:
        kv.set_gradient_compression({"type": "2bit", "threshold": 0.5})
    rng = np.random.RandomState(SEED)
    kv.init(0, mx.nd.zeros((n,)))
    grads = [
        mx.nd.array(rng.standard_normal(n).astype(np.float32), ctx=mx.cpu(i))
        for i in range(DEVICES)
    ]
    outs = [mx.nd.zeros((n,), ctx=mx.cpu(i)) for i in range(DEVICES)]
    mx.nd.waitall()

    def step():
        kv.push(0, grads)
        kv.pull(0, out=outs)
        mx.nd.waitall()

    return timed(step, iters)


def table(rows, rng):
    return rng.standard_normal((rows, ROW_LEN)).astype(np.float32)


def row_sparse_pull_case(rows, ids_count, iters):
    kv = mx.kv.create("device")
    rng = np.random.RandomState(SEED)
    shape = (rows, ROW_LEN)
    kv.init(1, mx.nd.array(table(rows, rng)).tostype("row_sparse"))
    ids = mx.nd.array(rng.randint(0, rows, size=ids_count), dtype="int64")
    out = mx.nd.sparse.zeros("row_sparse", shape)
    mx.nd.waitall()

    def step():
        kv.row_sparse_pull(1, out=out, row_ids=ids)
        mx.nd.waitall()

    return timed(step, iters)


def row_sparse_push_case(rows, ids_count, iters):
    kv = mx.kv.create("device")
    rng = np.random.RandomState(SEED)
    shape = (rows, ROW_LEN)
    kv.init(1, mx.nd.array(table(rows, rng)).tostype("row_sparse"))
    values = []
    for i in range(DEVICES):
        ids = np.sort(rng.choice(rows, size=ids_count, replace=False)).astype(np.int64)
        data = rng.standard_normal((ids_count, ROW_LEN)).astype(np.float32)
        values.append(
            mx.nd.sparse.row_sparse_array((data, ids), shape=shape, ctx=mx.cpu(i))
        )
    mx.nd.waitall()

    def step():
        kv.push(1, values)
        mx.nd.waitall()

    return timed(step, iters)


def many_keys_case(keys_count, iters):
    kv = mx.kv.create("device")
    keys = list(range(keys_count))
    kv.init(keys, [mx.nd.zeros((1,)) for _ in keys])
    rng = np.random.RandomState(SEED)
    values = [mx.nd.array(rng.standard_normal(1).astype(np.float32)) for _ in keys]
    outs = [mx.nd.zeros((1,)) for _ in keys]
    mx.nd.waitall()

    def step():
        kv.push(keys, values)
        kv.pull(keys, out=outs)
        mx.nd.waitall()

    return timed(step, iters)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="a,b,c,d,e")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in DEFAULT_ITERS]
    if unknown:
        parser.error(f"unknown cases {unknown}; cases are a, b, c, d, e")
    s = args.scale
    n = scaled(DENSE_LEN, s)
    rows = scaled(TABLE_ROWS, s)
    ids_count = min(rows, scaled(SPARSE_IDS, s))
    keys_count = scaled(SMALL_KEYS, s)
    result = {}
    for case in cases:
        iters = args.iters or DEFAULT_ITERS[case]
        if case == "a":
            result[case] = dense_case(n, iters, compression=False)
        elif case == "b":
            result[case] = dense_case(n, iters, compression=True)
        elif case == "c":
            result[case] = row_sparse_pull_case(rows, ids_count, iters)
        elif case == "d":
            result[case] = row_sparse_push_case(rows, ids_count, iters)
        elif case == "e":
            result[case] = many_keys_case(keys_count, iters)
        print(f"mxnet_bench: {case} done", file=sys.stderr)
    result["mxnet_version"] = mx.__version__
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
