"""Shared benchmark helpers: the machine a number came from, and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
# Environment variables that cap the vector ISA of torch's kernels, oneDNN and MKL (to time a smaller CPU's
# kernels on a bigger one).
CAP_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def machine_info() -> dict:
    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):  # after the first CPU's model name
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    # The same CPU name has come with and without AVX-512, which the fits' matrix products lean on. A run
    # with the kernels capped (CAP_VARS) names the caps: torch then reports the capped ISA, not the CPU's.
    isa = torch.backends.cpu.get_cpu_capability()
    caps = cap_prefix().strip()
    if caps:
        own = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "?"
        isa = f"{own} CPU, kernels capped at {isa}: {caps}"
    info = {"cpu": cpu, "isa": isa, "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def cap_prefix() -> str:
    """The ISA caps of this run as a command prefix ("VAR=value ... "), so that a section's command reruns
    with them; empty when none is set."""
    return "".join(f"{k}={os.environ[k]} " for k in CAP_VARS if os.environ.get(k))


def machine_line(info: dict | None = None) -> str:
    i = info or machine_info()
    threads = f" ({i['threads']} torch threads)" if "threads" in i else ""
    isa = f" ({i['isa']})" if i.get("isa") else ""
    return f"Machine: {i['cpu']}{isa}, {i['cores']} cores{threads}, torch {i['torch']}, device {i['device']}."


def load_average() -> str:
    """The 1, 5 and 15-minute load averages as ``uptime`` prints them (read it before the run starts)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def provenance(load: str) -> str:
    """"Command: `...`. Machine: .... Load average at the start: ...." for a section: this script, its arguments
    quoted as given, the machine and ``load`` (``load_average()`` taken when the run began)."""
    return (f"Command: `PYTHONPATH=. python benchmarks/{Path(sys.argv[0]).name} {shlex.join(sys.argv[1:])}`. "
            f"{machine_line(machine_info())} Load average at the start: {load}.")


def write_section(name: str, markdown: str, path: Path | None = None) -> Path:
    """Replace the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` (append if missing).

    Written to a temporary file next to the target and renamed, so it is never half-written.
    """
    path = Path(path or BENCHMARKS_MD)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here comes from a script in `benchmarks/`.\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def publish(name: str, lines: list[str], write: bool = True) -> str:
    """Print a benchmark's markdown and, unless told not to, (re)write its BENCHMARKS.md section."""
    md = "\n".join(lines)
    print(md)
    if write:
        write_section(name, md)
    return md
