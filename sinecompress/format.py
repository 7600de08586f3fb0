"""The compressed checkpoint format (version 1).

A factorised ``<module>.weight`` is replaced by factor tensors:

* sine:    ``<module>.sine_u`` (m×k_s), ``.sine_v`` (n×k_s), ``.sine_amp`` (m or 1),
           and, when the layer has a linear part, ``.sine_lin_u`` (m×k_l), ``.sine_lin_v`` (n×k_l);
* lowrank: ``<module>.lowrank_u`` (m×k), ``.lowrank_v`` (n×k).

Every other tensor is copied byte for byte. ``__metadata__`` holds ``"format": "pt"`` (what
transformers expects) and one JSON document under ``"sinecompress"``::

    {"format_version": 1, "tool_version": "...", "source": "...", "plan": {...},
     "layers": {"<module>": {"kind": "sine"|"lowrank", "shape": [m, n], "dtype": "F32",
                             "rank": k, "linear_rank": k_l, "omega": w, "amplitude": "row",
                             "rel_error": e}}}

``rank`` is the total factor rank (sine + linear part); the sine part has ``rank - linear_rank``.
"""

from __future__ import annotations

import json

import torch

from . import __version__
from .errors import InputError
from .layers import LowRankLinear, SineLowRankLinear, sine_weight

FORMAT_VERSION = 1
META_KEY = "sinecompress"
SINE_SUFFIXES = ("sine_u", "sine_v", "sine_amp", "sine_lin_u", "sine_lin_v")
LOWRANK_SUFFIXES = ("lowrank_u", "lowrank_v")

ST_TO_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
TORCH_TO_ST = {v: k for k, v in ST_TO_TORCH.items()}


def factor_names(module: str, kind: str, linear_rank: int = 0) -> list[str]:
    if kind == "lowrank":
        return [f"{module}.{s}" for s in LOWRANK_SUFFIXES]
    sfx = SINE_SUFFIXES if linear_rank > 0 else SINE_SUFFIXES[:3]
    return [f"{module}.{s}" for s in sfx]


def make_metadata(layers: dict, plan: dict | None, source: str, extra: dict | None = None) -> dict[str, str]:
    doc = {"format_version": FORMAT_VERSION, "tool_version": __version__, "source": source,
           "plan": plan, "layers": layers}
    if extra:
        doc.update(extra)
    return {"format": "pt", META_KEY: json.dumps(doc, sort_keys=True)}


def read_metadata(metadata: dict[str, str] | None, where: str) -> dict | None:
    """The sinecompress document of a checkpoint, or None for a plain dense checkpoint."""
    if not metadata or META_KEY not in metadata:
        return None
    try:
        doc = json.loads(metadata[META_KEY])
    except ValueError:
        raise InputError(f"{where}: the '{META_KEY}' metadata is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION or "layers" not in doc:
        raise InputError(f"{where}: unsupported sinecompress format "
                         f"(format_version {doc.get('format_version') if isinstance(doc, dict) else '?'}); "
                         f"this tool reads version {FORMAT_VERSION}")
    return doc


def dense_from_factors(layer: dict, get) -> torch.Tensor:
    """Materialise one layer's dense weight (original dtype) from its factors; ``get(name)`` loads a tensor."""
    module, dtype = layer["name"], ST_TO_TORCH[layer["dtype"]]
    if layer["kind"] == "lowrank":
        u, v = get(f"{module}.lowrank_u"), get(f"{module}.lowrank_v")
        return (u.float() @ v.float().T).to(dtype)
    lin = (get(f"{module}.sine_lin_u"), get(f"{module}.sine_lin_v")) if layer.get("linear_rank", 0) else (None, None)
    return sine_weight(get(f"{module}.sine_u"), get(f"{module}.sine_v"), layer["omega"],
                       get(f"{module}.sine_amp"), *lin, dtype=dtype)


def build_module(layer: dict, get, bias: torch.Tensor | None) -> torch.nn.Module:
    """An nn.Module for one factorised layer, holding its factors (and bias)."""
    m, n = layer["shape"]
    module = layer["name"]
    dtype = ST_TO_TORCH[layer["dtype"]]
    if layer["kind"] == "lowrank":
        mod = LowRankLinear(n, m, layer["rank"], bias=bias is not None, dtype=dtype)
        with torch.no_grad():
            mod.u.copy_(get(f"{module}.lowrank_u"))
            mod.v.copy_(get(f"{module}.lowrank_v"))
    else:
        k_l = layer.get("linear_rank", 0)
        mod = SineLowRankLinear(n, m, layer["rank"] - k_l, layer["omega"], bias=bias is not None,
                                amplitude=layer.get("amplitude", "row"), linear_rank=k_l, dtype=dtype)
        names = dict(zip(("u", "v", "amp", "lin_u", "lin_v"), factor_names(module, "sine", k_l)))
        mod.load_factors({k: get(v) for k, v in names.items()})
    if bias is not None:
        with torch.no_grad():
            mod.bias.copy_(bias)
    return mod
