"""How good is a (compressed) model: perplexity for causal LMs, agreement with a reference for encoders.

Text: the built-in held-out text (``calibrate.builtin_texts("heldout")``: stdlib docstrings, disjoint from
the calibration text) or a file of lines / JSONL ``{"text": ...}`` records, always in file order.

* **Causal LM, perplexity** (the sliding-window method of the Hugging Face guide "Perplexity of
  fixed-length models"): the texts are joined with ``"\\n\\n"`` and tokenized once as one sequence with the
  model's own tokenizer and its default special tokens (a BOS at the very start for tokenizers that add
  one, e.g. Llama 2; none for SmolLM2 or GPT-2; windows get no BOS of their own), then cut to the first
  ``max_tokens``. Windows of ``window`` tokens start every ``stride`` tokens (the last one ends at the end
  of the text); each window scores only the tokens that no earlier window scored, each predicted from
  everything before it in its window. The first token of the text is never scored (no context), nor, when
  ``stride == window``, the first token of each window. Perplexity is exp of the mean negative
  log-likelihood (natural log) over the scored tokens.
* **Encoder, agreement with a reference**: each text is one input (truncated to ``window`` tokens); sentence embeddings are the mean-pooled, L2-normalised last hidden states (the
  sentence-transformers recipe). ``cosine`` is the mean cosine between the model's and the reference's
  embedding of the same text; ``nn_agreement`` the share of texts whose nearest neighbour among the other
  texts is the same text under both models. The texts are the first ones whose token counts (the
  reference's tokenizer) fit in ``max_tokens``.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..calib.data import length_batches, with_padding
from ..calib.text import SEPARATOR, builtin_texts, read_texts
from ..errors import InputError, NonFiniteOutput, UsageError
from ..io.format import read_metadata
from ..io.hf_model import is_causal_lm
from ..io.open import open_source
from ..io.paths import regular_file
from .models import CAUSAL_LM, ENCODER, load_for_eval, read_config

# Chosen on SmolLM2-135M and the built-in held-out text for time and stability (docs/evaluate.md).
DEFAULT_WINDOW = 1024
# Encoders are cheaper per token and nearest-neighbour agreement needs many texts (~370 for MiniLM).
DEFAULT_MAX_TOKENS = {CAUSAL_LM: 2048, ENCODER: 8192}
BUILTIN = "built-in held-out text (Python stdlib docstrings)"

Progress = Callable[[str, int, int | None], None]  # (what, done, total or None while unknown)


def default_stride(window: int) -> int:
    return max(1, window // 2)


def check_settings(window: int | None, stride: int | None, max_tokens: int | None) -> int | None:
    """Validate the settings; return the stride (default: half the window; None while the window is)."""
    if window is not None and window < 2:
        raise UsageError(f"--window {window}: must be at least 2 tokens (one of context, one to predict)")
    if stride is None and window is not None:
        stride = default_stride(window)
    if stride is not None and stride < 1:
        raise UsageError(f"--stride {stride}: must be at least 1 token")
    if stride is not None and window is not None and stride > window:
        raise UsageError(f"--stride {stride}: must be at most the window ({window}); a larger stride "
                         "would skip tokens")
    if max_tokens is not None and max_tokens != 0 and max_tokens < 2:
        raise UsageError(f"--max-tokens {max_tokens}: must be at least 2, or 0 for the whole text")
    return stride


def eval_texts(text: str | Path | None) -> tuple[list[str], str]:
    """(texts, description): the file's lines / JSONL texts, or the built-in held-out text."""
    if text is None:
        return builtin_texts("heldout"), BUILTIN
    path = Path(text)
    if not path.exists():
        raise InputError(f"{path}: evaluation text file not found")
    return read_texts(regular_file(path, "evaluation text"), "evaluation text"), str(path)


def token_stream(tokenizer, texts: list[str], max_tokens: int | None) -> torch.Tensor:
    """The texts joined with SEPARATOR, tokenized once (default special tokens), cut to max_tokens."""
    ids = tokenizer(SEPARATOR.join(texts), verbose=False)["input_ids"]
    return torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)


@torch.no_grad()
def perplexity(model, token_ids: torch.Tensor, window: int = DEFAULT_WINDOW, stride: int | None = None,
               progress: Callable[[int, int], None] | None = None, name: str = "the model") -> dict:
    """Sliding-window perplexity of ``token_ids`` (one sequence); the convention is the module docstring's.

    Returns ``{perplexity, nll (mean, nats), tokens, scored_tokens, windows, window, stride}``; the
    perplexity is ``inf`` where exp(nll) overflows a float. Logits that are NaN or infinite (a model with
    broken weights) raise NonFiniteOutput naming ``name``: they have no perplexity.
    """
    stride = check_settings(window, stride, None)
    ids = token_ids.reshape(-1)
    n = ids.numel()
    if n < 2:
        raise InputError(f"the text is {n} token(s) long; perplexity needs at least 2")
    _check_ids(model, ids, name)
    starts = []
    for b in range(0, n, stride):
        starts.append(b)
        if b + window >= n:
            break
    device = next(model.parameters()).device
    keep_kw = _logits_to_keep_arg(model)
    nll, scored, prev_end = 0.0, 0, 0
    for i, b in enumerate(starts):
        e = min(b + window, n)
        first = max(prev_end, b + 1)  # first position this window scores
        if first < e:
            x = ids[b:e].to(device)[None]
            kw = {keep_kw: e - first + 1} if keep_kw else {}
            out = model(input_ids=x, **kw)
            logits = out.logits if hasattr(out, "logits") else out[0]
            # logits at positions first-1 .. e-2 predict tokens first .. e-1
            pred = logits[0, -(e - first + 1):-1].float()
            if not bool(torch.isfinite(pred).all()):
                raise NonFiniteOutput(f"{name}: its logits are not finite (NaN or infinite) in the window at token "
                                 f"{b}; the weights are broken (check them with `sinecompress report`)")
            nll += float(torch.nn.functional.cross_entropy(pred, ids[first:e].to(device), reduction="sum"))
            scored += e - first
        prev_end = e
        if progress:
            progress(i + 1, len(starts))
    mean = nll / scored
    return {"perplexity": math.exp(mean) if mean < _LOG_MAX_FLOAT else math.inf, "nll": mean, "tokens": n, "scored_tokens": scored,
            "windows": len(starts), "window": window, "stride": stride}


_LOG_MAX_FLOAT = math.log(torch.finfo(torch.float64).max)


def _check_ids(model, ids: torch.Tensor, name: str) -> None:
    """Token ids past the embedding table would fail deep inside the model: name the mismatch instead."""
    emb = model.get_input_embeddings() if callable(getattr(model, "get_input_embeddings", None)) else None
    vocab = getattr(emb, "num_embeddings", None)
    if vocab is not None and ids.numel() and int(ids.max()) >= vocab:
        raise InputError(f"{name}: its tokenizer gives token id {int(ids.max())}, but the model has {vocab} "
                         "token embeddings; the tokenizer does not belong to this model")


def _logits_to_keep_arg(model) -> str | None:
    """transformers' causal LMs can skip the vocabulary projection of unscored positions."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)


# --- encoders -------------------------------------------------------------------------------------


@torch.no_grad()
def embed(model, batches, progress: Callable[[int, int], None] | None = None,
          name: str = "the model") -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (the sentence-transformers recipe); InputError
    naming ``name`` for token ids past its embeddings, NonFiniteOutput for embeddings that are not finite."""
    out = []
    dev = next(model.parameters()).device
    for i, b in enumerate(batches):
        _check_ids(model, b["input_ids"], name)
        b = {k: v.to(dev) for k, v in b.items()}
        o = model(**b)
        h = getattr(o, "last_hidden_state", None)
        if h is None:  # a task-head class: its last hidden state is the last of hidden_states
            h = model(**b, output_hidden_states=True).hidden_states[-1]
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp_min(1)
        if not bool(torch.isfinite(e).all()):
            raise NonFiniteOutput(f"{name}: its embeddings are not finite (NaN or infinite); the weights are broken "
                             "(check them with `sinecompress report`)")
        out.append(torch.nn.functional.normalize(e.float(), dim=-1).cpu())
        if progress:
            progress(i + 1, len(batches))
    return torch.cat(out)


def agreement(ref: torch.Tensor, emb: torch.Tensor) -> dict:
    """Mean cosine to the reference embeddings; top-1 nearest-neighbour agreement (self excluded).

    Both are row-aligned, L2-normalised embeddings of the same texts (``embed``).
    """
    cos = (ref * emb).sum(-1)

    def nn1(e):
        s = e @ e.T
        s.fill_diagonal_(-2)
        return s.argmax(1)

    agree = float((nn1(ref) == nn1(emb)).float().mean())
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()), "nn_agreement": agree}


def _embeddings(loaded, texts, window, progress) -> torch.Tensor:
    tok = loaded.tokenizer
    with_padding(tok, loaded.display)
    batches, rows = length_batches(tok, texts, window)
    return embed(loaded.model, batches, progress, loaded.display)[rows]


def _texts_within(tokenizer, texts: list[str], max_tokens: int | None, max_length: int) -> tuple[list[str], int]:
    """The first texts whose token counts sum to at most max_tokens (all for 0/None), and that sum."""
    lengths = [len(x) for x in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    total, n = 0, 0
    while n < len(texts) and (not max_tokens or total + lengths[n] <= max_tokens):
        total += lengths[n]
        n += 1
    return texts[:n], total


# --- the whole evaluation -------------------------------------------------------------------------


def evaluate(model: str, against: str | None = None, text: str | Path | None = None, window: int | None = None,
             stride: int | None = None, max_tokens: int | None = None, device: str = "cpu",
             progress: Progress | None = None) -> dict:
    """Evaluate MODEL (and ORIG ``against``) on the text; return a JSON-able dict.

    ``window`` defaults to DEFAULT_WINDOW, or the models' context (``max_position_embeddings``) if shorter;
    ``stride`` to half the window; ``max_tokens`` to DEFAULT_MAX_TOKENS for the model's kind (0: the whole text).

    Causal LMs: perplexity of each model and ``perplexity_ratio`` = model / against. Encoders (``against``
    required): ``agreement`` = {cosine, cosine_min, nn_agreement, texts, tokens}. Each model is loaded, measured and
    freed in turn, so only one is in memory at a time.
    """
    check_settings(window, stride, max_tokens)
    texts, text_desc = eval_texts(text)  # a bad text file fails before any model is loaded
    configs = {spec: read_config(spec) for spec in (model, against) if spec is not None}
    kinds = {spec: CAUSAL_LM if is_causal_lm(c) else ENCODER for spec, c in configs.items()}
    kind = kinds[model]
    if against is not None and kinds[against] != kind:
        raise UsageError(f"{model} is {_a(kind)} but --against {against} is {_a(kinds[against])}; "
                         "compare a model with the model it was made from")
    window = _window(window, configs)
    stride = check_settings(window, stride, max_tokens)
    max_tokens = DEFAULT_MAX_TOKENS[kind] if max_tokens is None else max_tokens
    result = {"kind": kind, "text": text_desc,
              "settings": {"window": window, "stride": stride if kind == CAUSAL_LM else None,
                           "max_tokens": max_tokens or None, "device": device}}
    if kind == CAUSAL_LM:
        return {**result, **_causal(model, against, texts, text_desc, window, stride, max_tokens, device, progress)}
    if against is None:
        raise UsageError(_needs_reference(model))
    if len(texts) < 2:
        raise InputError(f"{text}: nearest-neighbour agreement needs at least 2 texts; the file has 1")
    return {**result, **_encoder(model, against, texts, window, max_tokens, device, progress)}


def _window(window: int | None, configs: dict) -> int:
    """The window: DEFAULT_WINDOW or the shortest context of the models if shorter; a longer one is an error."""
    positions = {spec: p for spec, c in configs.items() if (p := getattr(c, "max_position_embeddings", None))}
    for spec, p in positions.items():
        if type(p) is not int or p < 2:
            raise InputError(f"{spec}: its config's max_position_embeddings is {p!r}; a model needs at least 2 "
                             "positions")
    if window is None:
        return min([DEFAULT_WINDOW, *positions.values()])
    for spec, p in positions.items():
        if window > p:
            raise UsageError(f"--window {window}: longer than {spec}'s context ({p} positions)")
    return window


def _a(kind: str) -> str:
    return "a causal LM" if kind == "causal_lm" else "an encoder"


def _needs_reference(model: str) -> str:
    hint = ""
    try:
        src = open_source(model)
        doc = read_metadata(src.metadata, src.display)
        if doc and doc.get("source"):
            hint = f" (this checkpoint was made from {doc['source']})"
    except Exception:  # the hint is optional; the loader reports real problems
        pass
    return (f"{model} is an encoder: it has no perplexity, so eval compares it with a reference; "
            f"pass --against ORIG{hint}")


def _load(spec: str, device: str, progress: Progress | None):
    if progress:
        progress(f"loading {spec}", 0, None)
    t0 = time.perf_counter()
    loaded = load_for_eval(spec, device)
    return loaded, time.perf_counter() - t0


def _causal(model, against, texts, text_desc, window, stride, max_tokens, device, progress) -> dict:
    runs, streams = {}, {}
    for role, spec in (("against", against), ("model", model)):
        if spec is None:
            continue
        loaded, load_s = _load(spec, device, progress)
        ids = token_stream(loaded.tokenizer, texts, max_tokens)
        if ids.numel() < 2:
            raise InputError(f"{text_desc}: {ids.numel()} token(s) under {spec}'s tokenizer; perplexity needs at "
                             "least 2")
        t0 = time.perf_counter()
        label = f"perplexity {spec}"
        r = perplexity(loaded.model, ids, window, stride,
                       progress=(lambda d, t, label=label: progress(label, d, t)) if progress else None, name=spec)
        runs[role] = {"path": spec, "compressed": loaded.compressed, **r,
                      "load_seconds": round(load_s, 2), "seconds": round(time.perf_counter() - t0, 2)}
        streams[role] = ids
        del loaded
    out = {"model": runs["model"], "against": runs.get("against")}
    if against is not None:
        out["perplexity_ratio"] = runs["model"]["perplexity"] / runs["against"]["perplexity"]
        out["same_tokens"] = bool(torch.equal(streams["model"], streams["against"]))
    return out


def _encoder(model, against, texts, window, max_tokens, device, progress) -> dict:
    runs, embs, tokens = {}, {}, 0
    for role, spec in (("against", against), ("model", model)):
        loaded, load_s = _load(spec, device, progress)
        if role == "against":  # the reference's tokenizer picks the texts; both models see the same ones
            texts, tokens = _texts_within(loaded.tokenizer, texts, max_tokens, window)
            if len(texts) < 2:
                raise UsageError(f"--max-tokens {max_tokens}: fits fewer than 2 texts; raise it (or 0 for all)")
        t0 = time.perf_counter()
        label = f"embedding {spec}"
        embs[role] = _embeddings(loaded, texts, window,
                                 (lambda d, t, label=label: progress(label, d, t)) if progress else None)
        runs[role] = {"path": spec, "compressed": loaded.compressed, "load_seconds": round(load_s, 2),
                      "seconds": round(time.perf_counter() - t0, 2)}
        del loaded
    return {"model": runs["model"], "against": runs["against"],
            "agreement": {**agreement(embs["against"], embs["model"]), "texts": len(texts), "tokens": tokens}}
