"""The compressed checkpoint format (version 1), and the one place that validates it.

A factorised ``<module>.weight`` is replaced by factor tensors:

* sine:    ``<module>.sine_u`` (m×k_s), ``.sine_v`` (n×k_s), ``.sine_amp`` (m, or 1 for a scalar amplitude),
           and, when the layer has a linear part, ``.sine_lin_u`` (m×k_l), ``.sine_lin_v`` (n×k_l);
* lowrank: ``<module>.lowrank_u`` (m×k), ``.lowrank_v`` (n×k);

plus ``<module>.weight`` as a zero-element placeholder of the layer's dtype: a loader that does not
know the format (stock transformers without ``import sinecompress``) then stops on a shape mismatch
instead of silently running a randomly initialised layer. Readers ignore it; files written before
it was added load the same. A model directory's ``config.json`` carries ``quantization_config``
(``hf_quantization_config``), which transformers' loader hands to ``integrations/hf_quantizer.py``.

Every other tensor is copied byte for byte. ``__metadata__`` holds ``"format": "pt"`` (what
transformers expects) and one JSON document under ``"sinecompress"``::

    {"format_version": 1, "tool_version": "...", "source": "...", "plan": {...},
     "layers": {"<module>": {"kind": "sine"|"lowrank", "shape": [m, n], "dtype": "F32",
                             "rank": k, "linear_rank": k_l, "omega": w, "amplitude": "row",
                             "rel_error": e, ...}}}

``rank`` is the total factor rank (sine + linear part); the sine part has ``rank - linear_rank``.
``shape`` is always out×in; a layer whose dense weight is stored in×out (transformers' ``Conv1D``, as
in GPT-2) has ``"transposed": true``, and ``inflate`` writes its weight back in×out.
``read_layers`` checks every record against the factor tensors actually present before anything is
allocated, so ``inflate``, ``report``, ``load`` and the transformers integration trust what it returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..config import OMEGA_RANGE
from ..dtypes import FLOAT, TO_TORCH
from ..errors import InputError
from ..version import __version__
from ..weights import factor_params, sine_weight
from .sources import Source

FORMAT_VERSION = 1
META_KEY = "sinecompress"
AMPLITUDES = ("row", "scalar")
# factor key -> tensor-name suffix, per kind
SUFFIXES = {
    "sine": {"u": "sine_u", "v": "sine_v", "amp": "sine_amp", "lin_u": "sine_lin_u", "lin_v": "sine_lin_v"},
    "lowrank": {"u": "lowrank_u", "v": "lowrank_v"},
}
ALL_SUFFIXES = tuple(s for kind in SUFFIXES.values() for s in kind.values())
PLACEHOLDER = "weight"  # <module>.weight, zero elements
QUANT_METHOD = "sinecompress"  # config.json quantization_config.quant_method
HF_LAYER_KEYS = ("kind", "shape", "dtype", "rank", "linear_rank", "omega", "amplitude", "transposed")


def factor_shapes(kind: str, m: int, n: int, rank: int, linear_rank: int = 0,
                  amplitude: str = "row") -> dict[str, tuple[int, ...]]:
    """Shapes of a layer's factor tensors, by factor key (known before fitting)."""
    if kind == "lowrank":
        return {"u": (m, rank), "v": (n, rank)}
    ks = rank - linear_rank
    shapes = {"u": (m, ks), "v": (n, ks), "amp": (m if amplitude == "row" else 1,)}
    if linear_rank:
        shapes.update({"lin_u": (m, linear_rank), "lin_v": (n, linear_rank)})
    return shapes


def factor_names(module: str, kind: str, linear_rank: int = 0) -> dict[str, str]:
    """Tensor names of a layer's factors, by factor key."""
    keys = factor_shapes(kind, 1, 1, linear_rank + 1, linear_rank)
    return {k: f"{module}.{SUFFIXES[kind][k]}" for k in keys}


@dataclass(frozen=True)
class LayerRecord:
    """One compressed layer as the metadata describes it (checked against its tensors)."""

    name: str
    kind: str  # "sine" | "lowrank"
    shape: tuple[int, int]
    dtype: str
    rank: int
    linear_rank: int = 0
    omega: float | None = None
    amplitude: str | None = None
    rel_error: float | None = None
    act_error: float | None = None
    method: str | None = None
    transposed: bool = False  # the dense weight is stored in×out (transformers' Conv1D); ``shape`` is out×in

    @property
    def stored_shape(self) -> tuple[int, int]:
        """The dense weight's shape in the checkpoint (what ``inflate`` writes)."""
        return (self.shape[1], self.shape[0]) if self.transposed else self.shape

    @property
    def tensor_names(self) -> dict[str, str]:
        return factor_names(self.name, self.kind, self.linear_rank)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        m, n = self.shape
        return factor_shapes(self.kind, m, n, self.rank, self.linear_rank, self.amplitude or "row")

    @property
    def params(self) -> int:
        m, n = self.shape
        return factor_params(m, n, self.rank, self.kind, self.amplitude)

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if not self.transposed:  # records of nn.Linear layers stay as they were before the key existed
            del d["transposed"]
        return d


def make_metadata(layers: dict[str, LayerRecord], plan: dict | None, source: str,
                  extra: dict | None = None) -> dict[str, str]:
    doc = {"format_version": FORMAT_VERSION, "tool_version": __version__, "source": source,
           "plan": plan, "layers": {k: r.to_json() for k, r in layers.items()}}
    if extra:
        doc.update(extra)
    return {"format": "pt", META_KEY: json.dumps(doc, sort_keys=True)}


def hf_quantization_config(layers: dict[str, LayerRecord]) -> dict:
    """config.json's ``quantization_config``: what transformers' loader needs to build each layer."""
    return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "tool_version": __version__,
            "layers": {name: {k: v for k, v in rec.to_json().items() if k in HF_LAYER_KEYS}
                       for name, rec in sorted(layers.items())}}


def is_ours(quantization_config) -> bool:
    return isinstance(quantization_config, dict) and quantization_config.get("quant_method") == QUANT_METHOD


def read_metadata(metadata: dict[str, str] | None, where: str) -> dict | None:
    """The sinecompress document of a checkpoint, or None for a plain dense checkpoint."""
    if not metadata or META_KEY not in metadata:
        return None
    try:
        doc = json.loads(metadata[META_KEY])
    except (ValueError, RecursionError):
        raise InputError(f"{where}: the '{META_KEY}' metadata is not valid JSON") from None
    if isinstance(doc, dict) and doc.get("kind") == "init":
        raise InputError(f"{where}: an initialised checkpoint from `sinecompress convert` (for training from "
                         "scratch), not a compressed one; load it with sinecompress.scratch.load_init")
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{where}: unsupported sinecompress format "
                         f"(format_version {doc.get('format_version') if isinstance(doc, dict) else '?'}); "
                         f"this tool reads version {FORMAT_VERSION}")
    if not isinstance(doc.get("layers"), dict):
        raise InputError(f"{where}: the '{META_KEY}' metadata has no 'layers' mapping; the file is damaged")
    return doc


def _int(rec: dict, key: str, lo: int) -> int:
    v = rec.get(key, 0 if key == "linear_rank" else None)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"'{key}' must be an integer ≥ {lo}, got {v!r}")
    return v


def parse_record(name: str, rec) -> LayerRecord:
    """One layer record from the metadata, checked on its own (ValueError says what is wrong)."""
    if not isinstance(rec, dict):
        raise ValueError(f"the record is a {type(rec).__name__}, not a mapping")
    kind = rec.get("kind")
    if kind not in SUFFIXES:
        raise ValueError(f"'kind' must be one of {', '.join(SUFFIXES)}, got {kind!r}")
    shape = rec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2
            and all(type(d) is int and d > 0 for d in shape)):
        raise ValueError(f"'shape' must be [rows, cols] of positive integers, got {shape!r}")
    dtype = rec.get("dtype")
    if dtype not in FLOAT:
        raise ValueError(f"'dtype' must be one of {', '.join(FLOAT)}, got {dtype!r}")
    rank = _int(rec, "rank", 1)
    linear_rank = _int(rec, "linear_rank", 0) if kind == "sine" else 0
    if kind == "sine" and linear_rank >= rank:
        raise ValueError(f"'linear_rank' ({linear_rank}) must be below 'rank' ({rank})")
    omega = amplitude = None
    if kind == "sine":
        omega = rec.get("omega")
        if isinstance(omega, bool) or not isinstance(omega, (int, float)) or not math.isfinite(omega) \
                or not OMEGA_RANGE[0] <= omega <= OMEGA_RANGE[1]:
            raise ValueError(f"'omega' must be a number from {OMEGA_RANGE[0]:g} to {OMEGA_RANGE[1]:g}, got {omega!r}")
        amplitude = rec.get("amplitude", "row")
        if amplitude not in AMPLITUDES:
            raise ValueError(f"'amplitude' must be one of {', '.join(AMPLITUDES)}, got {amplitude!r}")
    errors = {k: rec.get(k) if isinstance(rec.get(k), (int, float)) and not isinstance(rec.get(k), bool) else None
              for k in ("rel_error", "act_error")}
    method = rec.get("method") if isinstance(rec.get("method"), str) else None
    transposed = rec.get("transposed", False)
    if not isinstance(transposed, bool):
        raise ValueError(f"'transposed' must be true or false, got {transposed!r}")
    return LayerRecord(name, kind, (shape[0], shape[1]), dtype, rank, linear_rank,
                       None if omega is None else float(omega), amplitude, **errors, method=method,
                       transposed=transposed)


def read_layers(src: Source) -> dict[str, LayerRecord]:
    """The validated layer records of a compressed checkpoint; InputError if it is not one or is damaged.

    Each record is checked on its own and against the tensors present: every factor is there with the
    shape and dtype the record implies, and the layer's dense ``.weight`` is not also there.
    """
    doc = read_metadata(src.metadata, src.display)
    if doc is None:
        raise InputError(f"{src.display}: not a sinecompress checkpoint (no '{META_KEY}' metadata); "
                         "run `sinecompress factorize` first")
    out = {}
    for name, raw in doc["layers"].items():
        try:
            rec = parse_record(name, raw)
            held = src.tensors.get(f"{name}.{PLACEHOLDER}")
            if held is not None and tuple(held.shape) != (0,):
                raise ValueError(f"the checkpoint also holds a dense {name + '.weight'!r} of shape {list(held.shape)}")
            for key, tname in rec.tensor_names.items():
                info = src.tensors.get(tname)
                if info is None:
                    raise ValueError(f"its factor tensor {tname!r} is missing")
                if tuple(info.shape) != rec.shapes[key] or info.dtype != rec.dtype:
                    raise ValueError(f"factor {tname!r} is {info.dtype}{list(info.shape)}, the record implies "
                                     f"{rec.dtype}{list(rec.shapes[key])}")
        except ValueError as e:
            raise InputError(f"{src.display}: layer {name!r} has an invalid compression record: {e}") from None
        out[name] = rec
    owned = owned_tensors(out)
    # A factor no record owns would reach a dense output as a raw factor, and stock tools would reject it.
    stray = next((t for t in src.tensors if t.rsplit(".", 1)[-1] in ALL_SUFFIXES and t not in owned), None)
    if stray is not None:
        raise InputError(f"{src.display}: tensor {stray!r} is named like a compressed layer's factor, but no layer "
                         "record owns it; the file is damaged or was edited")
    return out


def owned_tensors(layers: dict[str, LayerRecord]) -> dict[str, str]:
    """Factor (and placeholder) tensor name -> the module it belongs to."""
    return {t: name for name, rec in layers.items()
            for t in (f"{name}.{PLACEHOLDER}", *rec.tensor_names.values())}


def dense_from_factors(rec: LayerRecord, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Materialise one layer's dense weight (its recorded dtype) from its factors; ``get(name)`` loads a tensor."""
    t = {k: get(name) for k, name in rec.tensor_names.items()}
    dtype = TO_TORCH[rec.dtype]
    if rec.kind == "lowrank":
        w = (t["u"].float() @ t["v"].float().T).to(dtype)
    else:
        w = sine_weight(t["u"], t["v"], rec.omega, t["amp"], t.get("lin_u"), t.get("lin_v"), dtype=dtype)
    if not bool(torch.isfinite(w).all()):
        raise InputError(f"layer {rec.name!r}: its factors give non-finite weights (NaN or infinity); "
                         "the checkpoint is damaged")
    return w
