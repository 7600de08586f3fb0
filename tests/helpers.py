"""Plain helpers shared by the tests, imported normally (``from .helpers import ...``).

Fixtures built from these live in ``conftest.py``. One tiny-checkpoint builder (``tiny_state``), one
tiny BERT builder, one CLI runner in-process (``cli``) and one in a real process (``run_cli``, for
signals, kills, workers and import-time behaviour), and one check of the one-line error contract.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from sinecompress.cli import main
from sinecompress.io.examples import example_dir
from sinecompress.signals import SIGNALS

ROOT = Path(__file__).resolve().parents[1]
# The shape the crash-safety tests were written for: three blocks of 96x48 layers (break-even rank 32).
WIDE = {"width": 48, "hidden": 96, "layers": 3}


def tiny_state(seed: int = 0, *, width: int = 24, hidden: int = 64, layers: int = 2, head: bool = False,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A small transformer-like state dict: an embedding, and per block fc1 (hidden x width, with bias),
    fc2 (width x hidden; a bias in block 0 only) and a norm; plus an int64 tensor that must be copied as is.
    ``head``: add a 10 x width output head ("head", so without a config it counts as tied to the embedding)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"embed.weight": torch.randn(20, width, generator=g)}
    for i in range(layers):
        sd[f"blocks.{i}.fc1.weight"] = torch.randn(hidden, width, generator=g) / width**0.5
        sd[f"blocks.{i}.fc1.bias"] = torch.randn(hidden, generator=g)
        sd[f"blocks.{i}.fc2.weight"] = torch.randn(width, hidden, generator=g) / hidden**0.5
        if i == 0:
            sd[f"blocks.{i}.fc2.bias"] = torch.randn(width, generator=g)
        sd[f"blocks.{i}.norm.weight"] = torch.ones(width)
    if head:
        sd["head.weight"] = torch.randn(10, width, generator=g)
    sd["steps"] = torch.tensor([3], dtype=torch.int64)
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}


def tiny_file(path: Path, **kw) -> Path:
    """``tiny_state(**kw)`` saved as a .safetensors file at ``path``."""
    save_file(tiny_state(**kw), str(path), metadata={"format": "pt"})
    return path


def wide_file(path: Path, seed: int = 0) -> Path:
    """The crash-safety tests' checkpoint: ``tiny_state`` with the ``WIDE`` shape."""
    return tiny_file(path, seed=seed, **WIDE)


def tiny_bert(root: Path, seed: int = 0) -> Path:
    """A tiny random-weight BERT directory with MiniLM's tokenizer: a text model, so calibration is on by
    default (pass ``calibration=False`` / ``--no-calib`` for a weight-only run)."""
    from transformers import BertConfig, BertModel

    d = root / "tiny_bert"
    d.mkdir()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, architectures=["BertModel"])
    model = BertModel(cfg)
    cfg.save_pretrained(d)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    src = example_dir("minilm")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / f, d / f)
    return d


def cli(*args) -> tuple[int, str, str]:
    """Run the real CLI entry point in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = {s: signal.getsignal(s) for s in SIGNALS}  # main() installs its own handlers
    show = warnings.showwarning
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "300"  # rich wraps at 80 columns off a terminal: a wrapped error is not two errors
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
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return code, out.getvalue(), err.getvalue()


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a real ``python -m sinecompress`` process: this checkout first, offline."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "HF_HUB_OFFLINE": "1", "COLUMNS": "300", **extra}


def run_cli(*args, env_extra: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the CLI in a real subprocess, where the process itself is the point (signals, exit codes from
    the interpreter, import-time behaviour)."""
    return subprocess.run([sys.executable, "-m", "sinecompress", *map(str, args)], capture_output=True,
                          text=True, env=subprocess_env(**(env_extra or {})), timeout=timeout)


# A progress line as the CLI logs it when stderr is not a terminal (cli/progress.py: "[    3 s] fitting 2/6").
PROGRESS_LINE = re.compile(r"\[\s*\d+(\.\d)? (s|min)\] \S.*")


def assert_one_line_error(code: int, err: str, expected_code: int | tuple[int, ...], *fragments,
                           after_plan: bool = False) -> str:
    """The error contract: the documented exit code (or one of them), no traceback, and exactly one stderr
    line besides the progress log of the stages that ran before the error, naming each fragment. Returns
    the line. ``after_plan``: a recipe run prints its effective plan first; then the error must be the one
    ``error:`` line, and the last."""
    expected = (expected_code,) if isinstance(expected_code, int) else tuple(expected_code)
    assert code in expected, f"exit {code}, expected {expected}: {err}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    rest = [ln for ln in lines if not PROGRESS_LINE.fullmatch(ln)]
    if after_plan:
        assert sum(ln.startswith("error: ") for ln in rest) == 1, err
        rest = rest[-1:]
    assert len(rest) == 1 and rest[0] == lines[-1], f"expected one line on stderr, got {len(rest)}: {err}"
    for f in fragments:
        assert str(f) in rest[0], f"{f!r} not in {rest[0]!r}"
    return rest[0]


def leftovers(directory: Path) -> list[str]:
    """Temporary names a run could leave next to its output."""
    return sorted(p.name for p in directory.iterdir() if ".sc.tmp-" in p.name or ".tmp-" in p.name)


LLAMA_WORDS = ("the of and to in is that it for on with as was by be this are from at or an which not have "
               "one all were can their more has been other its when also time there some into only new first").split()


def word_tokenizer(d: Path) -> int:
    """Save a word-level tokenizer over LLAMA_WORDS into ``d`` (the built-in calibration text tokenizes to
    known words or <unk>); return its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, ",": 3, ".": 4, **{w: i + 5 for i, w in enumerate(LLAMA_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(str(d))
    return len(vocab)


def tiny_gpt2(root: Path, seed: int = 0) -> Path:
    """A tiny random-weight GPT-2 (its linear layers are transformers' Conv1D, weights stored in×out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d = root / "tiny_gpt2"
    n = word_tokenizer(d)
    cfg = GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=4, n_positions=256, initializer_range=0.3,
                     bos_token_id=1, eos_token_id=2, architectures=["GPT2LMHeadModel"])
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).save_pretrained(str(d))
    return d


def tiny_llama(root: Path, seed: int = 0, layers: int = 2) -> Path:
    """A tiny random-weight Llama causal LM directory with a word-level tokenizer (the built-in calibration
    text tokenizes to known words or <unk>)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = root / "tiny_llama"
    n = word_tokenizer(d)
    cfg = LlamaConfig(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.3, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                      architectures=["LlamaForCausalLM"])
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(str(d))
    return d
