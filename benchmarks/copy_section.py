"""Copy one section from another BENCHMARKS.md (one a GPU machine sent back, or a worktree's) into this
repository's, with an optional note appended.

    python benchmarks/copy_section.py FILES_AT/BENCHMARKS.md smollm_20_cuda "Run at commit abc1234 on ..."
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import write_section  # noqa: E402


def section(text: str, name: str) -> str | None:
    m = re.search(re.escape(f"<!-- BEGIN {name} -->") + r"\n(.*?)\n" + re.escape(f"<!-- END {name} -->"), text, re.S)
    return None if m is None else m.group(1).rstrip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("name")
    ap.add_argument("note", nargs="?", default="")
    args = ap.parse_args()
    body = section(args.source.read_text(), args.name)
    if body is None:
        raise SystemExit(f"error: {args.source} has no section {args.name}")
    write_section(args.name, body + (f"\n\n{args.note}" if args.note else ""))
    print(f"copied {args.name}")


if __name__ == "__main__":
    main()
