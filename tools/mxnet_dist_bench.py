#!/usr/bin/env python3
"""MXNet 1.9.1 dist_sync on localhost, for the distributed benchmark's "x MXNet" ratio.

Launches a ps-lite scheduler, S servers and W workers as local processes. Every worker then
times dense push + pull of one float32 key of N elements, and worker 0 prints one JSON object:
{"median_s": ..., "min_s": ..., "iters": ..., "elements": ..., "workers": W, "servers": S}.
The sizes and the barrier before each iteration match `kvstore-mpi-check bench`
(docs/distributed.md).

Usage: .venv/bin/python tools/mxnet_dist_bench.py [--workers 2] [--servers 1]
       [--elements 4194304] [--iters 20]

ps-lite reads DMLC_* variables. Never export a variable named PORT: ps-lite reads that too.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(elements, iters):
    import mxnet as mx

    kv = mx.kv.create("dist_sync")
    key = 0
    kv.init(key, mx.nd.zeros((elements,)))
    grad = mx.nd.array([(j % 7) * 0.25 for j in range(7)]).tile(elements // 7 + 1)[:elements]
    out = mx.nd.zeros((elements,))
    times = []
    for _ in range(iters):
        kv._barrier()
        started = time.perf_counter()
        kv.push(key, grad)
        kv.pull(key, out=out)
        out.wait_to_read()
        times.append(time.perf_counter() - started)
    if kv.rank == 0:
        print(json.dumps({
            "median_s": statistics.median(times),
            "min_s": min(times),
            "iters": iters,
            "elements": elements,
            "workers": kv.num_workers,
        }), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--elements", type=int, default=4 << 20)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--role", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "worker":
        worker(args.elements, args.iters)
        return
    if args.role in ("server", "scheduler"):
        import mxnet  # noqa: F401  (importing with DMLC_ROLE set runs the ps-lite loop)
        return

    env = dict(os.environ)
    env.pop("PORT", None)
    env.update({
        "DMLC_PS_ROOT_URI": "127.0.0.1",
        "DMLC_PS_ROOT_PORT": str(free_port()),
        "DMLC_NUM_SERVER": str(args.servers),
        "DMLC_NUM_WORKER": str(args.workers),
    })
    me = [sys.executable, os.path.abspath(__file__),
          "--elements", str(args.elements), "--iters", str(args.iters)]
    procs = []
    roles = ["scheduler"] + ["server"] * args.servers + ["worker"] * args.workers
    for role in roles:
        procs.append(subprocess.Popen(me + ["--role", role], env={**env, "DMLC_ROLE": role},
                                      stdout=subprocess.PIPE if role == "worker" else None))
    out = b""
    for p in procs[1 + args.servers:]:
        o, _ = p.communicate(timeout=600)
        out += o or b""
    for p in procs[:1 + args.servers]:
        p.wait(timeout=60)
    line = [l for l in out.decode().splitlines() if l.startswith("{")]
    if not line:
        sys.exit("no result from the workers")
    result = json.loads(line[0])
    result["servers"] = args.servers
    print(json.dumps(result))


if __name__ == "__main__":
    main()
