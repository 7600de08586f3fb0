"""Tiny checkpoints and a CLI runner shared by the reliability, hostile-input and distributed tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


def tiny_state(seed: int = 0, width: int = 48, layers: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"embed.weight": torch.randn(20, width, generator=g)}
    for i in range(layers):
        sd[f"blocks.{i}.fc1.weight"] = torch.randn(2 * width, width, generator=g) / width**0.5
        sd[f"blocks.{i}.fc1.bias"] = torch.randn(2 * width, generator=g)
        sd[f"blocks.{i}.fc2.weight"] = torch.randn(width, 2 * width, generator=g) / width**0.5
        sd[f"blocks.{i}.norm.weight"] = torch.ones(width)
    return sd


def tiny_file(path: Path, **kw) -> Path:
    save_file(tiny_state(**kw), str(path))
    return path


def run_cli(*args, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "COLUMNS": "200", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "sinecompress", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def leftovers(directory: Path) -> list[str]:
    """Temporary names a run could leave next to its output."""
    return sorted(p.name for p in directory.iterdir() if ".sc.tmp-" in p.name or ".tmp-" in p.name)


def cli(*args) -> tuple[int, str, str]:
    """Run the real CLI entry point in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    import contextlib
    import io
    import signal
    import warnings

    from sinecompress.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    show = warnings.showwarning
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("always")
            main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        warnings.showwarning = show
    return code, out.getvalue(), err.getvalue()
