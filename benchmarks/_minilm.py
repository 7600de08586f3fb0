"""Shared MiniLM helpers for the fitting benchmarks: model, texts, embeddings, metrics."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sinecompress.calib.capture import capture_grams
from sinecompress.calib.data import tokenize
from sinecompress.calib.text import builtin_texts
from sinecompress.io.examples import example_dir
from sinecompress.io.format import LayerRecord
from sinecompress.io.hf_model import dense_model
from sinecompress.io.open import open_source
from sinecompress.nn.surgery import build_module
from sinecompress.report.evaluate import agreement, embed  # noqa: F401  (embed: used by the benchmarks)

MLP_TARGETS = r"encoder\.layer\.\d+\.(intermediate|output)\.dense"


def minilm():
    """all-MiniLM-L6-v2 built from its config, with its own weights loaded.

    ``SC_MODEL_DIR`` points at another copy of the model directory (the GPU machine has no package).
    """
    d = Path(os.environ["SC_MODEL_DIR"]) if os.environ.get("SC_MODEL_DIR") else example_dir("minilm")
    return dense_model(open_source(d)), d


def layer_module(kind: str, f: dict, bias: torch.Tensor | None, omega: float | None) -> torch.nn.Module:
    """The float32 module the pipeline builds for one layer's factors ("sine" or "lowrank"), with its bias;
    rank, linear rank and amplitude are read off the factors' shapes."""
    u, v = f["u"], f["v"]
    lin = f["lin_u"].shape[1] if kind == "sine" and f.get("lin_u") is not None else 0
    amp = None if kind == "lowrank" else ("row" if f["amp"].numel() > 1 else "scalar")
    rec = LayerRecord("", kind, (u.shape[0], v.shape[0]), "F32", u.shape[1] + lin, lin, omega, amp)
    return build_module(rec, {k: t.float() for k, t in f.items() if t is not None},
                        None if bias is None else bias.float(), torch.float32)


@dataclass
class Experiment:
    """The shared setup of the MiniLM fitting benchmarks."""

    model: torch.nn.Module  # the original, float32, eval mode
    names: list[str]  # the 12 MLP matrices
    calib: list[dict]  # calibration batches
    held: list[dict]  # held-out batches
    grams: dict  # capture_grams of the original model on calib
    ref: torch.Tensor  # the original's held-out embeddings
    mods: dict  # name -> module of the original


def experiment(calib: int, heldout: int) -> Experiment:
    torch.manual_seed(0)
    model, d = minilm()
    names = mlp_names(model)
    cal = batches_for(d, "calib", calib)
    held = batches_for(d, "heldout", heldout)
    return Experiment(model, names, cal, held, capture_grams(model, names, cal), embed(model, held),
                      dict(model.named_modules()))


def mlp_names(model) -> list[str]:
    return [n for n, _ in model.named_modules() if re.fullmatch(MLP_TARGETS, n)]


def texts_for(split: str, count: int) -> list[str]:
    """Built-in stdlib text; ``SC_TEXTS`` (JSON {"calib": [...], "heldout": [...]}) pins the exact text
    (another Python version has other docstrings)."""
    if os.environ.get("SC_TEXTS"):
        return json.loads(Path(os.environ["SC_TEXTS"]).read_text())[split][:count]
    return builtin_texts(split, count)


def batches_for(d, split: str, count: int, seq_len: int = 128):
    return tokenize(texts_for(split, count), d, seq_len)


@torch.no_grad()
def quality(ref: torch.Tensor, emb: torch.Tensor) -> dict:
    """Mean cosine to the reference embeddings; top-1 nearest-neighbour agreement (self excluded): the
    definition `sinecompress eval` uses (sinecompress.report.evaluate.agreement)."""
    q = agreement(ref, emb)
    return {"cosine": q["cosine"], "nn_agreement": q["nn_agreement"]}
