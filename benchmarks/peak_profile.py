"""Where a CLI run's memory peaks: run ``sinecompress ARGS`` in this process, sample the resident size
every 5 ms, and print the main thread's sinecompress stack at each new high (and a timeline with the
anonymous / file-backed split every 0.5 s) on stderr. Linux only (/proc). A tool for finding what to
cut, not a benchmark: it writes nothing to BENCHMARKS.md.

    PYTHONPATH=. python benchmarks/peak_profile.py factorize DIR --method wsvd --param-ratio 0.8 --out OUT
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

MIB = 2**20


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def split_mib() -> tuple[int, int]:
    """(RssAnon, RssFile) in MiB."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["RssAnon"].split()[0]) // 1024, int(fields["RssFile"].split()[0]) // 1024


def stack_of(thread_id: int, depth: int = 6) -> str:
    frame = sys._current_frames().get(thread_id)
    frames = [f"{os.path.basename(s.filename)}:{s.lineno} {s.name}" for s in traceback.extract_stack(frame)
              if "sinecompress" in s.filename]
    return " > ".join(frames[-depth:])


def main() -> None:
    main_id = threading.main_thread().ident
    highs: list[tuple[float, str]] = []
    timeline: list[tuple[float, float, tuple[int, int], str]] = []
    t0 = time.time()

    def sample():
        best, last = 0.0, 0.0
        while True:
            r = resident_mib()
            if r > best + 20:
                best = r
                highs.append((r, stack_of(main_id)))
            now = time.time()
            if now - last > 0.5:
                last = now
                timeline.append((now - t0, r, split_mib(), stack_of(main_id, 3)))
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    from sinecompress.cli import main as cli

    sys.argv = ["sinecompress", *sys.argv[1:]]
    try:
        cli()
    except SystemExit:
        pass
    finally:
        for t, r, (anon, file), st in timeline:
            print(f"T {t:7.1f} {r:7.0f} MiB anon {anon} file {file}  {st}", file=sys.stderr)
        for r, st in highs[-12:]:
            print(f"{r:7.0f} MiB  {st}", file=sys.stderr)


if __name__ == "__main__":
    main()
