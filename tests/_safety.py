"""Shared pieces of the safety suite (tests/test_safety_*.py): a CLI runner in this process and one in a
real process, tiny checkpoints, and the one check every hostile case must pass (``refused``): the
documented exit code, one stderr line naming the culprit, no traceback, nothing left behind, nothing
existing changed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from .helpers import assert_one_line_error, subprocess_env
from .helpers import cli as sc  # the CLI entry point run in this process: (exit code, stdout, stderr)

ROOT = Path(__file__).resolve().parents[1]
# Names a run may leave next to its output only while it runs.
LEFTOVER_MARKS = (".sc.tmp-", ".sc.lock", ".sc.work", ".tmp-")
FAST = ("--method", "svd", "--rank", "2")  # the quickest factorize there is: a truncated SVD per layer


def env() -> dict:
    return subprocess_env()


def sc_process(*args, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI in a real process (``python -m sinecompress``), for what only a process shows."""
    return subprocess.run([sys.executable, "-m", "sinecompress", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=timeout, cwd=cwd)


def tiny_state(seed: int = 0, m: int = 16, n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"blocks.0.fc1.weight": torch.randn(m, n, generator=g), "blocks.0.fc1.bias": torch.randn(m, generator=g),
            "blocks.0.fc2.weight": torch.randn(n, m, generator=g), "steps": torch.tensor([3])}


def tiny(path: Path, seed: int = 0, extra: dict | None = None, metadata: dict | None = None) -> Path:
    """A tiny checkpoint file: two linear layers, a bias and an int64 tensor (plus ``extra``)."""
    save_file({**tiny_state(seed), **(extra or {})}, str(path), metadata=metadata or {"format": "pt"})
    return path


def model_dir(root: Path, name: str = "model", seed: int = 0) -> Path:
    """A tiny Hugging Face-style directory: model.safetensors, config.json (no tokenizer: no calibration)."""
    d = root / name
    d.mkdir()
    tiny(d / "model.safetensors", seed)
    (d / "config.json").write_text(json.dumps({"model_type": "toy", "hidden_size": 8}))
    return d


def tiny_bert(root: Path) -> Path:
    """A tiny random BERT with MiniLM's tokenizer: a text model, so factorize calibrates on it."""
    import shutil

    from transformers import BertConfig, BertModel

    from sinecompress.io.examples import example_dir

    d = root / "bert"
    d.mkdir()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128, architectures=["BertModel"])
    cfg.save_pretrained(d)
    save_file({k: v.contiguous() for k, v in BertModel(cfg).state_dict().items()}, str(d / "model.safetensors"))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(example_dir("minilm") / f, d / f)
    return d


def sharded_dir(root: Path, name: str = "sharded") -> Path:
    d = root / name
    d.mkdir()
    sd = tiny_state()
    names = list(sd)
    weight_map = {}
    for i, keys in enumerate((names[:2], names[2:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: sd[k] for k in keys}, str(d / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, shard))
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def compressed(root: Path, name: str = "c.safetensors") -> Path:
    """A real compressed file (svd, rank 2) of ``tiny``."""
    src = tiny(root / f"src-{name}")
    out = root / name
    code, _, err = sc("factorize", src, "--out", out, *FAST)
    assert code == 0, err
    src.unlink()
    return out


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots`` (followed no links): its kind and, for files, a hash of the bytes."""
    seen = {}
    for root in roots:
        entries = [root] + (sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [])
        for p in entries:
            if p.is_symlink():
                seen[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                seen[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                seen[str(p)] = "dir"
            elif p.exists():
                seen[str(p)] = "special"
    return seen


def leftovers(*dirs: Path) -> list[str]:
    """Temporary, lock and work names a run could leave in ``dirs``."""
    found = []
    for d in dirs:
        if d.is_dir():
            found += [str(p) for p in d.iterdir() if any(mark in p.name for mark in LEFTOVER_MARKS)]
    return sorted(found)


def one_line(code: int, err: str, expected: int | tuple[int, ...], *fragments: str, after_plan: bool = False) -> str:
    """``helpers.assert_one_line_error``, and the line is an ``error: ...`` line. ``after_plan``: a recipe run
    shows its plan table first (open: that table should wait until the run can start)."""
    line = assert_one_line_error(code, err, expected, *fragments, after_plan=after_plan)
    assert line.startswith("error: "), line
    return line


def refused(result: tuple[int, str, str], expected: int | tuple[int, ...], *fragments, keep: dict | None = None,
            clean: tuple[Path, ...] = (), absent: tuple[Path, ...] = (), after_plan: bool = False) -> str:
    """``one_line``, and: every entry of the ``keep`` snapshot unchanged (and nothing added there), no
    leftover in the ``clean`` directories, no ``absent`` path created. The one exception: a work dir of
    fitted layers that the error line names, with --resume (kept so that a long fit is not lost)."""
    code, _, err = result
    line = one_line(code, err, expected, *fragments, after_plan=after_plan)

    def said(path: str) -> bool:  # a work dir may stay for --resume when the error line says where it is
        work = next((part for part in Path(path).parts if part.endswith(".sc.work")), None)
        return work is not None and work in line and "--resume" in line

    if keep is not None:
        roots = {Path(k) for k in keep}
        now = snapshot(*roots)
        changed = sorted(k for k in set(now) | set(keep) if now.get(k) != keep.get(k) and not said(k))
        assert not changed, f"existing data changed: {changed}"
    left = [p for p in leftovers(*clean) if not said(p)]
    assert left == [], left
    for p in absent:
        assert not os.path.lexists(p), f"{p} was written"
    return line


def warned_ok(result: tuple[int, str, str]) -> list[str]:
    """Exit 0, no traceback, and every stderr line that is not the summary is a one-line ``warning:``."""
    code, _, err = result
    assert code == 0, err
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith("warning:")]


def readable(path: Path, source: Path | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of an output (file or directory), read back with the stock safetensors reader; all
    float tensors finite, except one the tool copied through from a ``source`` that is itself non-finite
    there (the user's data, kept as it was)."""
    from safetensors.torch import load_file

    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    assert files, f"{path} holds no safetensors file"
    given = load_file(str(source)) if source is not None else {}
    out = {}
    for f in files:
        for k, t in load_file(str(f)).items():
            assert k not in out, f"{k} twice"
            copied = k in given and given[k].shape == t.shape and not bool(torch.isfinite(given[k].float()).all())
            if t.is_floating_point() and not copied:
                assert bool(torch.isfinite(t.float()).all()), f"{k} is not finite"
            out[k] = t
    return out
