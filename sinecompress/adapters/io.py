"""Adapters on disk, in peft's layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

Tensor names are peft's: ``base_model.model.<module>.lora_A.weight`` (r×in), ``.lora_B.weight``
(out×r) and, for DoRA, ``.lora_magnitude_vector`` (out,). Plain LoRA and DoRA files are written with
``peft_type: "LORA"`` and load into peft unchanged. The sine kinds are written with
``peft_type: "SINE_LORA"`` so that peft refuses them instead of silently loading them as linear LoRA;
their frequencies sit under the ``"sinecompress"`` key. Per-module r/α/ω are stored under exact
module names.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..dtypes import FLOAT
from ..errors import InputError, UsageError
from ..io.atomic import atomic_output, claim_output
from ..io.header import check_safetensors_header
from ..io.model_dir import not_a_model_output, write_like_source
from ..io.open import open_source
from ..io.paths import make_output_parent, regular_file
from ..io.sources import Source, read_json
from ..io.writer import Entry, save_tensors
from ..matching import Pattern
from ..pipeline.card import CARD, adapter_card, dense_card
from ..version import __version__
from .config import AdapterConfig
from .functional import dense_delta
from .inject import inject_adapters, iter_adapters

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
FORMAT_VERSION = 1


@dataclass
class AdapterModule:
    """One module's adapter as read from disk (float tensors, as stored)."""

    name: str
    kind: str
    A: torch.Tensor
    B: torch.Tensor
    alpha: float
    omega: float
    magnitude: torch.Tensor | None = None

    @property
    def r(self) -> int:
        return self.A.shape[0]

    @property
    def scale(self) -> float:
        c = self.alpha / self.r
        return c / math.sqrt(self.A.shape[1]) if self.kind.startswith("sine") else c

    def delta(self) -> torch.Tensor:
        """ΔW before DoRA renormalisation, float32."""
        return dense_delta(self.A.float(), self.B.float(), self.omega, self.scale, self.kind.startswith("sine"))

    def merged(self, w0: torch.Tensor) -> torch.Tensor:
        """W0 with this adapter folded in, float32."""
        w = w0.float() + self.delta()
        if self.magnitude is None:
            return w
        return w * (self.magnitude.float() / torch.linalg.vector_norm(w, dim=1))[:, None]


def save_adapter(model: nn.Module, out_dir: str | Path, overwrite: bool = True) -> Path:
    """Write the model's adapters (one kind per model) to ``out_dir`` in peft's layout; return it."""
    out_dir = Path(out_dir)
    mods = list(iter_adapters(model))
    if not mods:
        raise UsageError("model has no adapters to save; call inject_adapters first")
    kinds = {_kind_of(m) for _, m in mods}
    if len(kinds) > 1:
        raise UsageError(f"model mixes adapter kinds {sorted(kinds)}; save_adapter stores one kind per file")
    kind = kinds.pop()
    if any(m.merged for _, m in mods):
        raise UsageError("adapters are merged into the base weights; unmerge them before saving")
    tensors = {}
    for name, m in mods:
        tensors[f"{PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().contiguous().cpu()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().contiguous().cpu()
        if m.dora:
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = m.lora_magnitude_vector.detach().contiguous().cpu()
    r = Counter(m.r for _, m in mods).most_common(1)[0][0]
    alpha = Counter(m.alpha for _, m in mods).most_common(1)[0][0]
    dropout = next((m.lora_dropout.p for _, m in mods if isinstance(m.lora_dropout, nn.Dropout)), 0.0)
    cfg = {
        "peft_type": "SINE_LORA" if kind.startswith("sine") else "LORA",
        "task_type": None,
        "base_model_name_or_path": getattr(getattr(model, "config", None), "name_or_path", None) or None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": [n for n, _ in mods],
        "rank_pattern": {n: m.r for n, m in mods if m.r != r},
        "alpha_pattern": {n: m.alpha for n, m in mods if m.alpha != alpha},
        "use_dora": kind.endswith("dora"),
        "use_rslora": False,
        "fan_in_fan_out": False,
        "bias": "none",
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    if kind.startswith("sine"):
        omega = Counter(m.omega for _, m in mods).most_common(1)[0][0]
        cfg["sinecompress"] = {
            "format_version": FORMAT_VERSION, "tool_version": __version__, "kind": kind, "omega": omega,
            "omega_pattern": {n: m.omega for n, m in mods if m.omega != omega},
            "update": "dW = sin(omega * B @ A) / sqrt(in_features) * (alpha / r)",
        }
    make_output_parent(out_dir)
    with atomic_output(out_dir, overwrite, kind="dir", replaceable=not_a_model_output) as tmp:
        tmp.mkdir()
        save_tensors(tmp / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / CARD).write_text(adapter_card(cfg, len(mods), sum(t.numel() for t in tensors.values())))
    return out_dir


def _kind_of(m) -> str:
    return ("sine_" if m.sine else "") + ("dora" if m.dora else "lora")


def read_adapter(adapter_dir: str | Path) -> list[AdapterModule]:
    """Read an adapter directory (ours or peft's LoRA/DoRA) into per-module records."""
    adapter_dir = Path(adapter_dir)
    cfg_path, w_path = adapter_dir / CONFIG_NAME, adapter_dir / WEIGHTS_NAME
    if not adapter_dir.is_dir():
        raise InputError(f"{adapter_dir}: no such adapter directory (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
    for p in (cfg_path, w_path):
        if not p.exists():
            raise InputError(f"{p}: missing; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    cfg = read_json(cfg_path, dict, "a JSON object")
    regular_file(w_path, "adapter weights")
    ptype = cfg.get("peft_type")
    if ptype not in ("LORA", "SINE_LORA"):
        raise InputError(f"{cfg_path}: peft_type {ptype!r} is not supported (LORA or SINE_LORA)")
    sc = cfg.get("sinecompress") or {}
    if not isinstance(sc, dict):
        raise InputError(f"{cfg_path}: 'sinecompress' must be a JSON object")
    if ptype == "SINE_LORA":
        kind = sc.get("kind")
        if kind not in ("sine_lora", "sine_dora"):
            raise InputError(f"{cfg_path}: SINE_LORA adapter without a valid sinecompress.kind")
    else:
        kind = "dora" if cfg.get("use_dora") else "lora"
    if cfg.get("use_rslora"):
        raise InputError(f"{cfg_path}: rsLoRA scaling is not supported; re-save it without use_rslora")
    check_safetensors_header(w_path)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(w_path), framework="pt") as f:
            for key in f.keys():
                m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector)"
                                 r"(?:\.weight)?", key)
                if m is None:
                    raise InputError(f"{w_path}: unexpected tensor {key!r} (only lora_A/lora_B/magnitude are supported)")
                tensors.setdefault(m.group(1), {})[m.group(2).split(".")[0]] = f.get_tensor(key)
    except InputError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"{w_path}: cannot read ({e})") from None
    out = []
    for name, t in tensors.items():
        if "lora_A" not in t or "lora_B" not in t:
            raise InputError(f"{w_path}: module {name!r} lacks lora_A or lora_B")
        A, B = t["lora_A"], t["lora_B"]
        if A.dim() != 2 or B.dim() != 2 or B.shape[1] != A.shape[0]:
            raise InputError(f"{w_path}: module {name!r} has inconsistent shapes A {tuple(A.shape)}, B {tuple(B.shape)}")
        mag = t.get("lora_magnitude_vector")
        if kind.endswith("dora") and (mag is None or mag.shape != (B.shape[0],)):
            raise InputError(f"{w_path}: DoRA module {name!r} needs a lora_magnitude_vector of length {B.shape[0]}")
        if A.shape[0] < 1 or not all(bool(torch.isfinite(x).all()) for x in (A, B) + ((mag,) if mag is not None else ())):
            raise InputError(f"{w_path}: module {name!r} has rank 0 or non-finite values")
        alpha = _lookup(cfg_path, "alpha_pattern", _patterns(cfg_path, cfg, "alpha_pattern"), name,
                        cfg.get("lora_alpha", 8))
        omega = _lookup(cfg_path, "omega_pattern", _patterns(cfg_path, sc, "omega_pattern"), name, sc.get("omega", 1.0))
        alpha = _number(cfg_path, "lora_alpha", alpha)
        omega = _number(cfg_path, "sinecompress.omega", omega, positive=True)
        out.append(AdapterModule(name, kind, A, B, alpha, omega, mag if kind.endswith("dora") else None))
    if not out:
        raise InputError(f"{w_path}: no adapter tensors")
    return out


def _patterns(path: Path, cfg: dict, key: str) -> dict:
    patterns = cfg.get(key) or {}
    if not isinstance(patterns, dict):
        raise InputError(f"{path}: '{key}' must map module patterns to numbers, got a JSON {type(patterns).__name__}")
    for pat in patterns:
        _pattern(path, key, pat)  # a pattern that does not compile is named here
    return patterns


def _pattern(path: Path, key: str, text: str, wrap: str = "{}") -> Pattern:
    """A pattern from the adapter's config: a bad or too slow one is an input error naming the file."""
    try:
        return Pattern(wrap.format(text), f"{path}: {key}")
    except UsageError as e:
        raise InputError(str(e)) from None


def _number(path: Path, key: str, value, positive: bool = False) -> float:
    """A setting of the adapter config as a finite float; InputError naming it otherwise."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise InputError(f"{path}: {key} must be a finite{' positive' if positive else ''} number, got {value!r}")
    return float(value)


def _lookup(path: Path, what: str, patterns: dict, name: str, default):
    """Exact module name first (what we write), then peft's own rule (a suffix regex) for peft's files."""
    if name in patterns:
        return patterns[name]
    for key, value in patterns.items():
        p = _pattern(path, what, key, r"(.*\.)?({})")
        try:
            if p.fullmatch(name):
                return value
        except UsageError as e:
            raise InputError(str(e)) from None
    return default


def load_adapter(model: nn.Module, adapter_dir: str | Path, lean: bool = True) -> list[str]:
    """Inject the adapters stored in ``adapter_dir`` into ``model`` and load their weights."""
    mods = read_adapter(adapter_dir)
    kind = mods[0].kind
    cfg = AdapterConfig(kind=kind, r=1, lean=lean,
                        rank_pattern={re.escape(m.name): m.r for m in mods},
                        alpha_pattern={re.escape(m.name): m.alpha for m in mods},
                        omega_pattern={re.escape(m.name): m.omega for m in mods})
    names = {n for n, _ in model.named_modules()}
    for m in mods:
        if m.name not in names:
            raise InputError(f"{adapter_dir}: adapter module {m.name!r} is not in the model; "
                             "load it into the same architecture it was trained on")
    chosen = inject_adapters(model, cfg, [re.escape(m.name) for m in mods])
    layers = dict(iter_adapters(model))
    with torch.no_grad():
        for m in mods:
            layer = layers[m.name]
            if layer.lora_A.weight.shape != m.A.shape or layer.lora_B.weight.shape != m.B.shape:
                raise InputError(f"{adapter_dir}: module {m.name!r} shapes A {tuple(m.A.shape)}, B {tuple(m.B.shape)} "
                                 f"do not fit the model's {layer.out_features}×{layer.in_features} layer")
            layer.lora_A.weight.copy_(m.A)
            layer.lora_B.weight.copy_(m.B)
            if m.magnitude is not None:
                layer.lora_magnitude_vector.copy_(m.magnitude)
    return chosen


def adapter_delta_weights(adapter_dir: str | Path, base: str | Path | Source | None = None) -> dict[str, torch.Tensor]:
    """ΔW (out×in, float32) per module of a saved adapter.

    LoRA and sine LoRA: ΔW is exact and needs no base. DoRA kinds: with ``base`` (a checkpoint spec or
    Source), ΔW = merged − W0 exactly; without it, the directional update (the low-rank or sine term
    before DoRA's magnitude renormalisation) is returned, which is what carries the adapter's rank.
    """
    mods = read_adapter(adapter_dir)
    if base is None or not mods[0].kind.endswith("dora"):
        return {m.name: m.delta() for m in mods}
    src = base if isinstance(base, Source) else open_source(base)
    keys = _match_base_keys(src, mods)
    return {m.name: m.merged(src.get(keys[m.name])) - src.get(keys[m.name]).float() for m in mods}


def _match_base_keys(src: Source, mods: list[AdapterModule]) -> dict[str, str]:
    """Base tensor for each adapter module: ``<name>.weight``, else the unique key ending in ``.<name>.weight``."""
    out = {}
    for m in mods:
        key = f"{m.name}.weight"
        if key not in src.tensors:
            hits = [k for k in src.tensors if k.endswith(f".{key}")]
            if len(hits) != 1:
                raise InputError(f"{src.display or src.path}: adapter module {m.name!r} has "
                                 f"{'no' if not hits else 'several'} matching weight in the base "
                                 f"({'none' if not hits else ', '.join(hits[:3])}); use the base it was trained on")
            key = hits[0]
        shape = src.tensors[key].shape
        if tuple(shape) != (m.B.shape[0], m.A.shape[1]):
            raise InputError(f"{src.display or src.path}: {key} is {tuple(shape)} but adapter module {m.name!r} "
                             f"expects {(m.B.shape[0], m.A.shape[1])}")
        out[m.name] = key
    return out


def merge_checkpoint(base: str | Path, adapter_dir: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write base + adapter as a dense safetensors checkpoint; return a summary.

    Like ``inflate``: a file base gives a file, a directory base a directory (``model.safetensors``
    plus the base's config and tokenizer files). The base is read one tensor at a time and the output
    streamed under a temporary name, then renamed; an existing ``out`` needs ``overwrite``.
    """
    src = open_source(base)
    mods = read_adapter(adapter_dir)
    keys = _match_base_keys(src, mods)
    out = Path(out)
    kind = "file" if src.side_dir() is None else "dir"
    with claim_output(out, overwrite, [*src.paths(), Path(adapter_dir)], kind, not_a_model_output):
        by_key = {keys[m.name]: m for m in mods}
        for k in by_key:
            if src.tensors[k].dtype not in FLOAT:
                raise InputError(f"{src.display}: {k} has dtype {src.tensors[k].dtype}; only float weights can be merged")

        def produce(name):
            t = src.get(name)
            m = by_key.get(name)
            if m is None:
                return t
            merged = m.merged(t)
            if not bool(torch.isfinite(merged).all()):
                raise InputError(f"{adapter_dir}: merging module {m.name!r} gives non-finite weights "
                                 f"(alpha {m.alpha:g}, omega {m.omega:g}); check the adapter's settings")
            return merged.to(t.dtype)

        entries = [Entry(k, info.dtype, info.shape, lambda n=k: produce(n)) for k, info in src.tensors.items()]
        meta = {"format": "pt", "sinecompress_merged_adapter": json.dumps(
            {"adapter": str(adapter_dir), "kind": mods[0].kind, "modules": len(mods), "tool_version": __version__})}
        card = dense_card(src, "merged-adapter", f"`{src.display}` with the {mods[0].kind} adapter `{adapter_dir}` "
                          f"({len(mods)} modules) merged into its weights.")
        write_like_source(src, out, entries, meta, overwrite, card=card)
    return {"base": src.display, "adapter": str(adapter_dir), "output": str(out), "kind": mods[0].kind,
            "merged_modules": sorted(m.name for m in mods), "tensors": len(entries)}
