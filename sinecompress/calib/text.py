"""Calibration and held-out text that ships with Python: no download, deterministic for a Python version.

The built-in text is the docstrings of a fixed, sorted list of standard-library modules, harvested
at run time with ``inspect``. A disjoint module list gives held-out text for evaluation and benchmarks.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError

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
# How texts are joined into one stream: for perplexity (``report/evaluate.py``) and packed calibration.
SEPARATOR = "\n\n"


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
                if not meth.startswith("_") and callable(attr) and from_stdlib(attr):
                    docs.append(inspect.getdoc(attr) or "")
    return docs


def from_stdlib(obj) -> bool:
    """Whether ``obj`` was defined by the standard library (C methods name no module). Other libraries patch
    stdlib classes: transformers adds ``warning_once`` and two more methods to ``logging.Logger``, whose
    docstrings made the built-in text 1,849 passages instead of 1,843 once transformers was imported."""
    owner = getattr(obj, "__module__", None)
    return not isinstance(owner, str) or owner.split(".")[0] in sys.stdlib_module_names


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


def read_texts(path: Path, what: str = "calibration text") -> list[str]:
    """Text lines, or JSONL records with a "text" field; ``what`` names the text in errors."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read {what} ({e})") from None
    texts = []
    jsonl = path.suffix in (".jsonl", ".json")
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                rec = json.loads(line)
                text = rec["text"]
            except (ValueError, KeyError, TypeError, IndexError, RecursionError):
                raise InputError(f"{path}:{i}: expected a JSON object with a \"text\" field") from None
            if not isinstance(text, str):
                raise InputError(f"{path}:{i}: \"text\" must be a string")
            texts.append(text)
        else:
            texts.append(line.strip())
    if not texts:
        raise InputError(f"{path}: no {what} found (empty file?)")
    return texts
