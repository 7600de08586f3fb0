"""Where two ``sinecompress factorize --json`` summaries of the same model part: the layers whose ranks
differ (an allocation's ``ranks``, else the layers' ``rank``), and each block's tuning losses side by side.

    sinecompress factorize example:smollm2 --param-ratio 0.8 --method wsvd --allocate sensitivity --json > a.json
    ... (another commit or seed) > b.json
    python benchmarks/compare_summaries.py a.json b.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def ranks(summary: dict) -> dict[str, int]:
    alloc = (summary.get("allocation") or {}).get("ranks")
    if alloc:
        return {name: after for name, (_, after) in alloc.items()}
    return {lay["name"]: lay["rank"] for lay in summary["layers"] if not lay["kept_dense"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args()
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    ra, rb = ranks(a), ranks(b)
    moved = {n: rb.get(n, 0) - ra[n] for n in ra if rb.get(n) != ra[n]}
    print(f"layers with another rank: {len(moved)} of {len(ra)}", end="")
    print(f"; |difference| {min(map(abs, moved.values()))} to {max(map(abs, moved.values()))}" if moved else "")
    blocks_a = {x["block"]: x for x in (a.get("finetune") or {}).get("blocks", []) if "loss_end" in x}
    blocks_b = {x["block"]: x for x in (b.get("finetune") or {}).get("blocks", []) if "loss_end" in x}
    both = sorted(set(blocks_a) & set(blocks_b))
    if not both:
        return
    split = [i for i in both if blocks_a[i]["undone"] != blocks_b[i]["undone"]]
    print(f"blocks whose tune was undone in one run only: {split or 'none'}")
    print("block  loss_start a / b  loss_end a / b")
    for i in both:
        x, y = blocks_a[i], blocks_b[i]
        print(f"{i:>5}  {x['loss_start']} / {y['loss_start']}  {x['loss_end']} / {y['loss_end']}")

if __name__ == "__main__":
    main()
