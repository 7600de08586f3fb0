"""Which layers to compress.

The rule (the same for CLI flags, recipes and adapters): a pattern is a Python regular
expression matched in full (``re.fullmatch``) against a *module name*, i.e. a tensor name
without its ``.weight`` suffix. ``encoder\\.layer\\.\\d+\\.intermediate\\.dense`` matches that
module in every layer; ``.*dense`` matches every module whose name ends in ``dense``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import regex

from .dtypes import FLOAT
from .errors import UsageError

# A pattern that needs longer than this to match one name is backtracking catastrophically
# (`(a|aa)+b`); Python's `re` would hang, `regex` stops and we say so.
MATCH_SECONDS = 1.0

# Never compressed by default: lookup tables, normalisation scales, and output heads that share
# storage with an embedding. Matched against module names, like user patterns.
DEFAULT_EXCLUDE = (
    r"(.*\.)?(\w*[Ee]mbed\w*|wte|wpe|shared)(\..*)?",  # any dotted component naming an embedding
    r"(.*\.)?(\w*[Nn]orm\w*|ln_\w+)(\..*)?",  # norms (most are 1-D anyway)
)


class Pattern:
    """A user's regular expression (Python's syntax), matched with a time limit."""

    def __init__(self, text: str, what: str):
        self.pattern, self.what = text, what
        try:
            self._re = regex.compile(text, regex.VERSION0)
        except (regex.error, RecursionError, OverflowError, TypeError, ValueError) as e:
            raise UsageError(f"{what} pattern {text!r} is not a valid regular expression ({e}); fix the pattern") from None

    def fullmatch(self, name: str):
        return self._timed(self._re.fullmatch, name)

    def match(self, name: str):
        return self._timed(self._re.match, name)

    def _timed(self, fn, name: str):
        try:
            return fn(name, timeout=MATCH_SECONDS)
        except TimeoutError:
            raise UsageError(f"{self.what} pattern {self.pattern!r} takes over {MATCH_SECONDS:g} s to match "
                             f"{name!r} (catastrophic backtracking); simplify the pattern") from None


def compile_patterns(patterns: Iterable[str], what: str) -> list[Pattern]:
    return [Pattern(p, what) for p in patterns]


def module_name(tensor_name: str) -> str:
    return tensor_name[: -len(".weight")] if tensor_name.endswith(".weight") else tensor_name


def full_match(patterns: list[Pattern], name: str) -> bool:
    return any(p.fullmatch(name) for p in patterns)


def is_linear_weight(name: str, shape: tuple[int, ...], dtype: str) -> bool:
    """The one test of what can be factorised: a 2-D floating-point ``*.weight``."""
    return name.endswith(".weight") and len(shape) == 2 and dtype in FLOAT


def linear_modules(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str]) -> list[str]:
    """Module names of every factorisable weight, in checkpoint order."""
    return [module_name(k) for k, s in shapes.items() if is_linear_weight(k, s, dtypes[k])]


def select_targets(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str],
                   targets: Iterable[str] = (), exclude: Iterable[str] = (),
                   tied: Iterable[str] = (), source: str = "model") -> list[str]:
    """Module names to compress, in checkpoint order.

    Candidates are 2-D floating ``*.weight`` tensors. With no ``targets``, every candidate is taken
    except embeddings, norms and heads tied to an embedding (``tied``). Each user pattern must match
    at least one candidate, otherwise the call fails naming the pattern.
    """
    tpats = compile_patterns(targets, "--target")
    xpats = compile_patterns(exclude, "--exclude")
    dpats = compile_patterns(DEFAULT_EXCLUDE, "default exclude")
    tied = set(tied)
    candidates = linear_modules(shapes, dtypes)
    if tpats:
        for p in tpats:
            if not any(p.fullmatch(c) for c in candidates):
                raise UsageError(f"--target {p.pattern!r} matches no 2-D weight in {source}; "
                                 "patterns match whole module names (tensor name minus '.weight'), "
                                 "run `sinecompress report` to list them")
        chosen = [c for c in candidates if full_match(tpats, c)]
        both = next((c for c in chosen if c in tied), None)
        if both is not None:  # a compressed head would no longer be the embedding transformers ties it to
            raise UsageError(f"--target matches {both!r}, which {source}'s config ties to the input embedding "
                             "(tie_word_embeddings); leave it out, or set tie_word_embeddings to false in "
                             "config.json if the checkpoint's head is its own")
    else:
        chosen = [c for c in candidates if not full_match(dpats, c) and c not in tied]
    for p in xpats:
        if not any(p.fullmatch(c) for c in chosen):
            raise UsageError(f"--exclude {p.pattern!r} matches none of the selected layers in {source}")
    return [c for c in chosen if not full_match(xpats, c)]
