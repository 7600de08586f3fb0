"""Quality gates: checks a compressed output must pass, else the run exits with code 1.

* ``max_param_ratio``: factor parameters / dense parameters over the targeted layers (layers kept
  dense count on both sides), from the factorize summary;
* ``max_rel_error``: the worst layer's relative weight error ‖Ŵ−W‖_F/‖W‖_F, from the summary;
* ``min_cosine``: mean cosine between the mean-pooled last hidden states of the original and the
  compressed model (``sinecompress.load.load``) on a small fixed set of held-out inputs. It runs the
  model, so it needs a Hugging Face model directory (``config.json``).
* ``max_perplexity``: the compressed causal LM's perplexity, and ``max_perplexity_ratio``: that perplexity
  over the original's, both from ``report.evaluate.evaluate`` with its defaults (built-in held-out text,
  sliding windows). They need a causal LM with a tokenizer.

The output is written before the gates run; a failing gate names itself and where the output is.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..config import as_float
from ..errors import GateFailed, NonFiniteOutput, UsageError
from ..io.hf_model import dense_model, is_causal_lm_dir
from ..io.model_dir import TOKENIZER_FILES, has_tokenizer
from ..io.open import open_source
from ..io.sources import Source
from ..pipeline.load import load
from ..report.evaluate import evaluate


def _in_range(lo, hi, lo_open=True, hi_open=True):
    """A gate limit's check: the number, or ValueError saying what was expected."""
    def check(v):
        f = as_float(v)  # 5e-1 (a string in YAML 1.1) counts, as it does for settings
        if f is None or not ((f > lo if lo_open else f >= lo) and (f < hi if hi_open else f <= hi)):
            raise ValueError(f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
        return f
    return check


# gate -> check of its limit
GATES = {
    "max_param_ratio": _in_range(0, 1, hi_open=False),
    "max_rel_error": _in_range(0, math.inf, lo_open=False),
    "min_cosine": _in_range(-1, 1, False, False),
    "max_perplexity": _in_range(1, math.inf, lo_open=False),
    "max_perplexity_ratio": _in_range(0, math.inf),
}
PERPLEXITY_GATES = ("max_perplexity", "max_perplexity_ratio")

# Held-out text for min_cosine: written for this project, never used for calibration.
HELD_OUT = [
    "The harbour was quiet after the storm, and the fishing boats stayed tied to the pier.",
    "Please restart the server before applying the configuration change.",
    "She planted tomatoes, basil and two rows of beans along the south fence.",
    "The committee postponed its vote until the budget figures were audited.",
    "A low-rank matrix can be stored with far fewer numbers than a dense one.",
    "He missed the last train and walked home through the empty streets.",
    "Add the flour slowly and stir until the batter is smooth.",
    "The telescope recorded a faint signal from a distant galaxy cluster.",
    "Our team shipped the new release on Friday after two weeks of testing.",
    "Rain is expected across the northern valleys by late afternoon.",
    "The violinist tuned her instrument while the audience took their seats.",
    "Unit tests caught the regression before it reached production.",
    "The museum's new wing displays pottery from the bronze age.",
    "Cats often sleep for more than twelve hours a day.",
    "The bridge was closed for repairs, so traffic was diverted through town.",
    "Compressing a model trades a little accuracy for memory and speed.",
]


def needs_model_dir(gates: dict, model_dir: Path | None, display: str) -> None:
    """Fail before any fitting when a gate cannot be evaluated on this kind of model."""
    if "min_cosine" in gates and (model_dir is None or not (model_dir / "config.json").exists()):
        raise UsageError(f"gate min_cosine runs the model, so it needs a Hugging Face model directory "
                         f"(config.json + weights); {display} is not one. Use max_rel_error / "
                         "max_param_ratio for bare checkpoints, or point `model` at the model directory")
    for gate in (g for g in PERPLEXITY_GATES if g in gates):
        if model_dir is None or not (model_dir / "config.json").exists():
            raise UsageError(f"gate {gate} runs the model, so it needs a Hugging Face causal LM directory "
                             f"(config.json + weights + tokenizer); {display} is not one")
        if not is_causal_lm_dir(model_dir):
            raise UsageError(f"gate {gate} needs a causal LM; {display} is an encoder: use min_cosine")
        if not has_tokenizer(model_dir):
            raise UsageError(f"gate {gate} measures perplexity with the model's own tokenizer, and {display} has "
                             "no tokenizer files (tokenizer.json, vocab.txt, ...); copy them into the model "
                             "directory, or drop the gate")


def check_gates(gates: dict, summary: dict, original: Source | None = None,
                compressed: Path | None = None) -> list[dict]:
    """Evaluate each gate; return ``[{gate, limit, value, passed, detail}]`` in GATES order."""
    results = []
    if "max_param_ratio" in gates:
        before = sum(layer["params_before"] for layer in summary["layers"])
        after = sum(layer["params_after"] for layer in summary["layers"])
        ratio = after / before if before else 1.0
        results.append(_result("max_param_ratio", gates["max_param_ratio"], ratio, ratio <= gates["max_param_ratio"],
                                f"{after:,} / {before:,} params over {len(summary['layers'])} target layers"))
    if "max_rel_error" in gates:
        fitted = [(layer["rel_error"], layer["name"]) for layer in summary["layers"] if layer["rel_error"] is not None]
        worst, name = max(fitted) if fitted else (0.0, None)
        results.append(_result("max_rel_error", gates["max_rel_error"], worst, worst <= gates["max_rel_error"],
                                f"worst layer {name}" if name else "no layer was factorised"))
    if "min_cosine" in gates:
        if original is None or compressed is None:
            raise UsageError("gate min_cosine needs the original and the compressed model directories")
        cos = embedding_cosine(original, compressed)
        results.append(_result("min_cosine", gates["min_cosine"], cos["mean"], cos["mean"] >= gates["min_cosine"],
                                f"mean over {cos['n']} held-out inputs ({cos['inputs']}); worst {cos['min']:.4f}"))
    if any(g in gates for g in PERPLEXITY_GATES):
        results += _perplexity_gates(gates, original, compressed)
    return results


def _perplexity_gates(gates: dict, original: Source | None, compressed: Path | None) -> list[dict]:
    ratio = "max_perplexity_ratio" in gates
    if compressed is None or (ratio and original is None):
        raise UsageError("the perplexity gates need the compressed (and, for the ratio, the original) model")
    try:
        r = evaluate(str(compressed), against=original.display if ratio else None)
    except NonFiniteOutput as e:  # a model with NaN logits fails its gates; it is not an unreadable input
        return [_result(g, gates[g], math.nan, False, str(e)) for g in PERPLEXITY_GATES if g in gates]
    m, where = r["model"], f"{r['model']['scored_tokens']:,} tokens of {r['text']}, window {r['settings']['window']}"
    results = []
    if "max_perplexity" in gates:
        results.append(_result("max_perplexity", gates["max_perplexity"], m["perplexity"],
                               m["perplexity"] <= gates["max_perplexity"], where))
    if ratio:
        value = r["perplexity_ratio"]
        results.append(_result("max_perplexity_ratio", gates["max_perplexity_ratio"], value,
                               value <= gates["max_perplexity_ratio"],
                               f"{m['perplexity']:.4g} / original {r['against']['perplexity']:.4g} on {where}"))
    return results


def _result(gate, limit, value, passed, detail) -> dict:
    return {"gate": gate, "limit": limit, "value": value, "passed": bool(passed), "detail": detail}


def raise_if_failed(results: list[dict], out: Path | str) -> None:
    failed = [r for r in results if not r["passed"]]
    if failed:
        what = "; ".join(f"{r['gate']}: {r['value']:.4g} {'<' if r['gate'].startswith('min') else '>'} "
                         f"{r['limit']:g} ({r['detail']})" for r in failed)
        raise GateFailed(f"gate failed: {what}; the output was written to {out}")


@torch.no_grad()
def embedding_cosine(original: Source | str | Path, compressed: Path, texts: list[str] = HELD_OUT, seq_len: int = 32,
                     seed: int = 0) -> dict:
    """Mean and worst cosine between mean-pooled last hidden states of an original model and its compressed
    model directory.

    Inputs are ``texts`` through the model's own tokenizer, or, for a model directory without a
    tokenizer, fixed random token ids (``seed``) of length ``seq_len``.
    """
    src = original if isinstance(original, Source) else open_source(original)
    compressed_model = load(compressed).float()
    ref = dense_model(src)
    batch, kind = _inputs(src.side_dir(), ref.config, texts, seq_len, seed)
    a = _pooled(ref, batch)
    b = _pooled(compressed_model, batch)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "n": int(cos.numel()), "inputs": kind}


def _inputs(model_dir: Path, config, texts, seq_len, seed):
    tok = None
    # transformers builds a vocabulary-less tokenizer (all [UNK]) from a bare config: require real files.
    if any((model_dir / f).exists() for f in TOKENIZER_FILES):
        try:
            import transformers

            tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except Exception:  # unreadable tokenizer files: fall back to token ids
            tok = None
    if tok is not None:
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        enc = tok(list(texts), padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, "held-out sentences"
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 2:
        raise UsageError(f"{model_dir}: gate min_cosine found no tokenizer and no vocab_size in config.json")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (len(texts), seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, f"random token ids, seed {seed}"


def _pooled(model, batch) -> torch.Tensor:
    out = model(**batch, output_hidden_states=True)
    h = out.hidden_states[-1] if getattr(out, "hidden_states", None) else out.last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return (h.float() * mask).sum(1) / mask.sum(1).clamp_min(1)
