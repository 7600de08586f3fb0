"""An initialised checkpoint for training from scratch: a timm model, converted, saved with its plan.

The file is the converted model's ``state_dict`` (so ``model.load_state_dict`` takes it after the
same conversion; ``load_init`` does both). ``__metadata__`` holds one JSON document under
``"sinecompress"``::

    {"format_version": 1, "kind": "init", "model": "timm:NAME", "model_kwargs": {...},
     "method": "sine"|"lowrank", "rank": k, "omega": w, "targets": [...], "exclude": [...],
     "seed": s, "tool_version": "...", "params_dense": N, "params": M, "layers": [plan entries]}

Unlike the compressed format (``format.py``, kind absent), tensor names are the layers' own
(``<module>.u``, ``.v``, ``.amp``), because nothing here was fitted to a dense weight.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import InputError, UsageError
from ..io.atomic import atomic_output, claim_output
from ..io.model_dir import not_a_model_output
from ..io.writer import save_tensors
from ..version import __version__
from .convert import check_settings, convert, count_params

# Its own metadata key: an init checkpoint is not a compressed one (io/format.py), and neither reader
# must take the other. Files written before the split carry kind "init" under "sinecompress".
META_KEY = "sinecompress_init"
OLD_META_KEY = "sinecompress"
FORMAT_VERSION = 1


def build_timm(spec: str, **kwargs):
    """``timm:NAME`` → a freshly initialised timm model (``pretrained=False``: nothing is downloaded)."""
    import timm

    if not spec.startswith("timm:") or not spec[5:]:
        raise UsageError(f"{spec!r}: the model must be given as timm:NAME, e.g. timm:vit_small_patch16_224")
    name = spec[5:]
    if name not in timm.list_models():
        raise UsageError(f"{spec}: unknown timm architecture; see timm.list_models() for the names")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise UsageError(f"{spec}: bad model options {kwargs}: {e}") from None


def convert_timm(spec: str, out: str | Path, rank: int, omega: float | None, targets: list[str],
                 method: str = "sine", exclude: list[str] = (), num_classes: int | None = None,
                 seed: int = 0, overwrite: bool = False) -> dict:
    """Build ``spec`` untrained, convert the target layers, write ``out`` atomically; return a summary."""
    t0 = time.perf_counter()
    out = Path(out)
    check_settings(method, rank, omega)
    with claim_output(out, overwrite, replaceable=not_a_model_output):  # fail before the (slow) model build
        return _convert(spec, out, rank, omega, targets, method, exclude, num_classes, seed, overwrite, t0)


def _convert(spec, out, rank, omega, targets, method, exclude, num_classes, seed, overwrite, t0) -> dict:
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    torch.manual_seed(seed)
    model = build_timm(spec, **kwargs)
    dense = count_params(model)
    plan = convert(model, targets, rank, omega, method, exclude)
    params = count_params(model)
    doc = {"format_version": FORMAT_VERSION, "kind": "init", "model": spec, "model_kwargs": kwargs,
           "method": method, "rank": rank, "omega": float(omega) if method == "sine" else None,
           "targets": list(targets), "exclude": list(exclude), "seed": seed, "tool_version": __version__,
           "params_dense": dense, "params": params, "layers": plan}
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_output(out, overwrite) as tmp:
        save_tensors(tmp, state, metadata={"format": "pt", META_KEY: json.dumps(doc)})
    target_dense = sum(e["params_dense"] for e in plan)
    target_after = sum(e["params_factored"] for e in plan)
    return {"model": spec, "output": str(out), "method": method, "rank": rank, "omega": doc["omega"],
            "layers": plan, "params_before": target_dense, "params_after": target_after,
            "compression_rate": target_after / target_dense, "model_params_before": dense,
            "model_params_after": params, "model_compression_rate": params / dense,
            "bytes": out.stat().st_size, "seconds": time.perf_counter() - t0}


def read_init(path: str | Path) -> dict:
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        doc = json.loads(meta[META_KEY] if META_KEY in meta else meta[OLD_META_KEY])
        if not isinstance(doc, dict):
            raise ValueError
    except (KeyError, ValueError, RecursionError):
        raise InputError(f"{path}: no sinecompress metadata; was it written by `sinecompress convert`?") from None
    if doc.get("kind") != "init" or doc.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: not a version-{FORMAT_VERSION} init checkpoint "
                         f"(kind={doc.get('kind')!r}, format_version={doc.get('format_version')!r})")
    return doc


def load_init(path: str | Path):
    """Rebuild the converted timm model an init checkpoint describes and load its tensors."""
    doc = read_init(path)
    model = build_timm(doc["model"], **doc["model_kwargs"])
    convert(model, doc["targets"], doc["rank"], doc["omega"], doc["method"], doc["exclude"])
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise InputError(f"{path}: tensors do not match {doc['model']} converted by its plan "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, doc
