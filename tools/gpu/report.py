"""Joins kvstore's GPU benchmark (kvstore-gpu-bench --out) and PyTorch's (torch_bench.py --out),
both from one run on one GPU, into the Markdown table docs/performance.md keeps: GB/s, the ratio
to the device-to-device memcpy of the same run, and the speed relative to the faster PyTorch
variant (its time over kvstore's: above 1 is faster than PyTorch).

usage: python3 report.py KVSTORE.json TORCH.json [DEVICE-NAME]
"""
import json
import sys

PAIRS = [  # kvstore case, torch case, issue target (fraction of memcpy), or None
    ("memcpy", "memcpy", None),
    ("reduce", "reduce", 0.95),
    ("quantize_2bit", "quantize_2bit", 0.85),
    ("dequantize_acc_2bit", "dequantize_accumulate", 0.90),
    ("row_sparse_pull", "row_sparse_pull", None),
    # torch.compile fuses its push and pull into one kernel, as kvstore's pushpull does; both
    # move the same bytes, so "× better torch" compares times (GB/s uses each case's count).
    ("pushpull", "push_pull", None),
]


def main():
    ours = {r["case"]: r for r in json.load(open(sys.argv[1]))}
    try:
        torch = json.load(open(sys.argv[2]))
    except (OSError, ValueError):
        torch = []
    memcpy = ours["memcpy"]["gbps"]
    print(f"| case | kvstore GB/s | × memcpy | target | torch eager GB/s | torch.compile GB/s | × better torch |")
    print("|---|---|---|---|---|---|---|")
    for mine, theirs, target in PAIRS:
        r = ours.get(mine)
        if r is None:
            continue
        t = {x["variant"]: x for x in torch if x["case"] == theirs}
        eager = t.get("eager", {}).get("gbps")
        comp = t.get("compiled", {}).get("gbps") if t.get("compiled", {}).get("ok") else None
        best = max([g for g in (eager, comp) if g], default=None)
        fmt = lambda g: f"{g:.0f}" if g else "–"
        times = [x["ms"] for x in t.values() if x.get("ms") and (x["variant"] == "eager" or x.get("ok"))]
        vs = f"{min(times) / r['ms']:.2f}" if times else "–"
        tgt = f"≥ {target}" if target else ""
        print(f"| {mine} | {r['gbps']:.0f} | {r['gbps'] / memcpy:.2f} | {tgt} | {fmt(eager)} | {fmt(comp)} | {vs} |")
    others = [r for c, r in ours.items() if c not in {p[0] for p in PAIRS}]
    if others:
        print()
        print("| other case | kvstore GB/s | × memcpy | ms | note |")
        print("|---|---|---|---|---|")
        for r in others:
            print(f"| {r['case']} | {r['gbps']:.0f} | {r['gbps'] / memcpy:.2f} | {r['ms']:.3f} | {r['note']} |")


if __name__ == "__main__":
    main()
