"""Calibration data and activation capture.

Calibration inputs are what the model sees while we measure what each target layer sees:

* ``--calib FILE``: text lines (``.txt``) or JSONL ``{"text": ...}`` for text models, tokenized
  with the model's own tokenizer; or a ``.safetensors`` file of input tensors (``input_ids``,
  ``attention_mask``, ... or any tensors the model's ``forward`` takes by name).
* the built-in default for text models: docstrings of a fixed, sorted list of Python
  standard-library modules, harvested at run time with ``inspect`` (offline, deterministic for a
  given Python version). A disjoint module list gives held-out text for benchmarks.

``capture_grams`` runs batches through a model and accumulates, per target ``nn.Linear``, the
Gram matrix ``XᵀX`` of its inputs over real (non-padding) tokens.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import InputError

# Fixed module lists: the calibration text and the held-out text never share a module.
CALIB_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum",
    "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
    "http.client", "imaplib", "ipaddress", "itertools", "logging", "lzma", "mailbox", "mimetypes",
)
HELDOUT_MODULES = (
    "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "secrets", "shlex", "shutil", "smtplib",
    "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "traceback", "typing", "unittest", "urllib.parse", "uuid", "weakref", "xml.dom.minidom",
    "zipfile", "zoneinfo",
)


def _docstrings(module_name: str) -> list[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(module_name)
    except Exception:  # a module missing on this Python build just contributes nothing
        return []
    with warnings.catch_warnings():  # some modules warn when their attributes are touched
        warnings.simplefilter("ignore")
        return _collect_docs(mod)


def _collect_docs(mod) -> list[str]:
    docs = [inspect.getdoc(mod) or ""]
    for name in sorted(vars(mod)):
        if name.startswith("_"):
            continue
        obj = getattr(mod, name)
        if getattr(obj, "__module__", None) != mod.__name__:
            continue
        docs.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            for meth in sorted(vars(obj)):
                attr = getattr(obj, meth, None)
                if not meth.startswith("_") and callable(attr):
                    docs.append(inspect.getdoc(attr) or "")
    return docs


def _passages(doc: str) -> Iterable[str]:
    """Sentences of a docstring, whitespace-collapsed, skipping code and tiny fragments."""
    for para in re.split(r"\n\s*\n", doc):
        if ">>>" in para or para.lstrip().startswith(("-", "=", ":")):
            continue
        for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(para.split())):
            if 30 <= len(sent) <= 300 and sum(c.isalpha() for c in sent) > 0.6 * len(sent):
                yield sent


def _module_passages(modules) -> list[list[str]]:
    seen: set[str] = set()
    per_module = []
    for m in modules:
        mine = []
        for doc in _docstrings(m):
            for p in _passages(doc):
                if p not in seen:
                    seen.add(p)
                    mine.append(p)
        per_module.append(mine)
    return per_module


def builtin_texts(split: str = "calib", limit: int | None = None) -> list[str]:
    """Deterministic English passages from stdlib docstrings; ``split`` is "calib" or "heldout".

    Modules are taken round-robin, so a small ``limit`` still covers many topics. Held-out text
    never repeats a calibration passage (inherited docstrings appear in several modules).
    """
    per_module = _module_passages(CALIB_MODULES if split == "calib" else HELDOUT_MODULES)
    banned = set() if split == "calib" else {p for ps in _module_passages(CALIB_MODULES) for p in ps}
    out = []
    for i in range(max(map(len, per_module), default=0)):
        out.extend(ps[i] for ps in per_module if i < len(ps) and ps[i] not in banned)
    return out[:limit] if limit else out


def read_texts(path: Path) -> list[str]:
    """Text lines, or JSONL records with a "text" field."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read calibration text ({e})") from None
    texts = []
    jsonl = path.suffix in (".jsonl", ".json")
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                rec = json.loads(line)
                text = rec["text"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{path}:{i}: expected a JSON object with a \"text\" field") from None
            if not isinstance(text, str):
                raise InputError(f"{path}:{i}: \"text\" must be a string")
            texts.append(text)
        else:
            texts.append(line.strip())
    if not texts:
        raise InputError(f"{path}: no calibration text found (empty file?)")
    return texts


@dataclass
class CalibData:
    """Batches of keyword inputs for ``model(**batch)``; ``mask`` marks real tokens (or None)."""

    batches: list[dict[str, torch.Tensor]]
    description: str

    @property
    def samples(self) -> int:
        return sum(next(iter(b.values())).shape[0] for b in self.batches)


def tokenize(texts: list[str], model_dir: Path, seq_len: int, batch_size: int = 32) -> list[dict]:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as e:
        raise InputError(f"{model_dir}: cannot load the model's tokenizer for calibration ({e}); "
                         "pass --no-calib or a safetensors --calib file of input tensors") from None
    # Batch texts of similar length together: padding is wasted compute on a CPU.
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=seq_len)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    batches = []
    for i in range(0, len(order), batch_size):
        chunk = [texts[j] for j in order[i:i + batch_size]]
        enc = tok(chunk, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
        batches.append(dict(enc))
    return batches


def read_tensor_inputs(path: Path, samples: int, batch_size: int = 32) -> list[dict]:
    from safetensors.torch import load_file

    from .sources import check_safetensors_header

    check_safetensors_header(path)
    tensors = load_file(str(path))
    if not tensors:
        raise InputError(f"{path}: no tensors in the calibration file")
    n = {t.shape[0] for t in tensors.values()}
    if len(n) != 1:
        raise InputError(f"{path}: calibration tensors must share their first (sample) dimension")
    total = min(n.pop(), samples)
    return [{k: v[i:min(i + batch_size, total)] for k, v in tensors.items()} for i in range(0, total, batch_size)]


def load_calibration(calib: str | Path | None, model_dir: Path | None, samples: int, seq_len: int,
                     batch_size: int = 32) -> CalibData:
    """Calibration batches from ``calib`` (a file) or, when None, the built-in stdlib text."""
    if calib is not None:
        path = Path(calib)
        if not path.exists():
            raise InputError(f"{path}: calibration file not found")
        if path.suffix == ".safetensors":
            return CalibData(read_tensor_inputs(path, samples, batch_size), f"{path.name} (tensors)")
        if model_dir is None:
            raise InputError(f"{path}: text calibration needs a model directory with a tokenizer")
        texts = read_texts(path)[:samples]
        return CalibData(tokenize(texts, model_dir, seq_len, batch_size), f"{path.name} ({len(texts)} texts)")
    texts = builtin_texts("calib", samples)
    return CalibData(tokenize(texts, model_dir, seq_len, batch_size), f"built-in stdlib docstrings ({len(texts)} texts)")


def _real_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    if mask is not None and mask.numel() == x.shape[0]:
        x = x[mask.reshape(-1).bool().to(x.device)]
    return x


def capture_grams(model: nn.Module, names: list[str], batches: list[dict], device: str = "cpu") -> dict:
    """Per target module: ``{"gram": XᵀX (float64, n×n), "tokens": count}`` over real tokens."""
    mods = dict(model.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise InputError(f"layer {missing[0]!r} is not a module of the calibration model")
    stats = {n: {"gram": None, "tokens": 0} for n in names}
    current: dict = {"mask": None}

    def hook(name):
        def fn(_mod, inputs):
            x = _real_tokens(inputs[0].detach(), current["mask"]).double()
            s = stats[name]
            s["gram"] = x.T @ x if s["gram"] is None else s["gram"].add_(x.T @ x)
            s["tokens"] += x.shape[0]
        return fn

    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        run_batches(model, batches, device, current)
    finally:
        for h in handles:
            h.remove()
    return stats


def run_batches(model: nn.Module, batches: list[dict], device: str = "cpu", current: dict | None = None):
    """Forward every batch (no grad); ``current["mask"]`` is set to each batch's attention mask."""
    model.eval()
    with torch.no_grad():
        for b in batches:
            if current is not None:
                current["mask"] = b.get("attention_mask")
            try:
                model(**{k: v.to(device) for k, v in b.items()})
            except (TypeError, ValueError, RuntimeError) as e:
                raise InputError(f"calibration inputs do not fit the model ({type(e).__name__}: {e})") from None


@dataclass
class Calibration:
    """What the calibrate stage hands to the fit: the float32 model, its batches and per-layer Grams."""

    model: nn.Module
    data: CalibData
    grams: dict[str, dict]

    def record(self) -> dict:
        tokens = next(iter(self.grams.values()))["tokens"] if self.grams else 0
        return {"used": True, "data": self.data.description, "samples": self.data.samples, "tokens": tokens}


def model_for_source(src) -> nn.Module | None:
    """A float32 transformers model built from the source's config, with the source's weights."""
    if src.config() is None:
        return None
    from .load import _hf_model_from_config

    try:
        model = _hf_model_from_config(src.model_dir)
    except Exception as e:  # an architecture this transformers version does not know
        raise InputError(f"{src.model_dir}: cannot build the model from config.json for calibration ({e}); "
                         "pass --no-calib") from None
    state = {k: src.get(k).float() for k in src.tensors}
    buffers = {k for k, _ in model.named_buffers()}  # e.g. position_ids: saved by some versions, not others
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if k not in buffers]
    if unexpected:
        # Checkpoints saved from a task head may prefix names (e.g. "bert."); try without the prefix.
        prefix = getattr(model, "base_model_prefix", "")
        stripped = {k[len(prefix) + 1:] if k.startswith(prefix + ".") else k: v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(stripped, strict=False)
        unexpected = [k for k in unexpected if k not in buffers]
    if unexpected:
        raise InputError(f"{src.display}: weight {unexpected[0]!r} does not fit the model built from config.json")
    return model.float().eval()


def has_tokenizer(model_dir: Path | None) -> bool:
    return model_dir is not None and any((model_dir / f).exists() for f in
                                         ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model"))


def calibrate(src, names: list[str], *, calib: str | Path | None = None, enabled: bool | None = None,
              samples: int = 256, seq_len: int = 128, model: nn.Module | None = None,
              device: str = "cpu") -> tuple[Calibration | None, str]:
    """The calibrate stage. Returns (calibration or None, a one-line note for the summary).

    ``enabled=None`` means automatic: on for a model directory with a tokenizer (the built-in text)
    or whenever ``calib`` is given; ``enabled=False`` (``--no-calib``) turns it off.
    """
    if enabled is False:
        return None, "calibration off (--no-calib): weight-space fit"
    text_model = src.model_dir is not None and has_tokenizer(src.model_dir)
    if calib is None and not text_model:
        return None, ("no calibration: not a text model directory with a tokenizer, and no --calib file; "
                      "weight-space fit")
    if model is None and src.config() is None:
        return None, (f"no calibration: {src.display} has no config.json to build the model from; "
                      "weight-space fit (pass a model directory, or use the Python API with model=)")
    # Read the calibration data first: a bad file fails before the model is built.
    is_tensor_file = calib is not None and Path(calib).suffix == ".safetensors"
    data = load_calibration(calib, src.model_dir if not is_tensor_file else None, samples, seq_len)
    if model is None:
        model = model_for_source(src)
    model.to(device)
    grams = capture_grams(model, names, data.batches, device)
    for name, g in grams.items():
        if g["gram"] is None:
            raise InputError(f"layer {name!r} saw no calibration input (is it used in the model's forward?)")
    return Calibration(model, data, grams), f"calibrated on {data.description}"
